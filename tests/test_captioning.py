"""The captioning model's own code in-process: prompts, batching by prompt length, weights."""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pytest

from tritonlab.assets import blip
from tritonlab.assets.repository import model_dir


@pytest.fixture(scope="module")
def code():
    return blip.code()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    """A tiny BLIP stand-in in its own folder: the code's logic, in a second per test."""
    folder = tmp_path_factory.mktemp("tiny_blip")
    blip.ensure_blip(folder, source=blip.STAND_IN_TINY)
    return str(folder)


@pytest.fixture(scope="module")
def captioner(code, tiny):
    return code.Captioner(tiny, max_new_tokens=8)


LABELS = ["Bread", "Dairy product", "Noodles/Pasta", "Egg", "Vegetable/Fruit", "Bread"]


def test_prompt_template_in_one_place(code):
    assert code.PROMPT_TEMPLATE == "a photo of {label},"
    assert code.prompt_for(b"Noodles/Pasta") == "a photo of noodles/pasta,"
    assert code.prompt_for("  Dairy   product ") == "a photo of dairy product,"


def test_caption_continues_the_prompt(captioner, images):
    [caption] = captioner.caption([captioner.decode(images[0].read_bytes())], ["Bread"])
    assert caption.startswith("a photo of bread,")
    assert len(caption) > len("a photo of bread,")


@pytest.mark.parametrize("strategy", ["generate_per_prompt_length", "encode_then_decode"])
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_mixed_labels_caption_as_each_would_alone(code, tiny, images, strategy, attention):
    """Prompts of different token lengths in one batch must not change any caption: each
    strategy's batch equals BLIP's own generate() run on each image alone (eager, float32)."""
    reference = code.Captioner(tiny, max_new_tokens=8, strategy="generate_per_image",
                               attention="eager")
    fast = code.Captioner(tiny, max_new_tokens=8, strategy=strategy, attention=attention,
                          vision_batch=4)
    decoded = [reference.decode(p.read_bytes()) for p in images]
    alone = [reference.caption([img], [label])[0] for img, label in zip(decoded, LABELS)]
    assert fast.caption(decoded, LABELS) == alone
    tokenizer = reference.processor.tokenizer
    lengths = {len(tokenizer(code.prompt_for(lb))["input_ids"]) for lb in LABELS}
    assert len(lengths) > 1, "the test needs prompts of different lengths"
    if strategy == "encode_then_decode":
        assert set(fast.last_timing) == {"vision encoder", "text decoder"}


def test_full_size_variants_caption_exactly_alike(code, weights_ready, images):
    """The served variants on the full-size BLIP (real or stand-in): the fastest's captions
    equal eager float32 generate()'s, image by image, with mixed prompt lengths in one batch."""
    from tritonlab.serving import configs

    folder = str(model_dir("conditional_captioning"))
    keys = ("strategy", "attention", "dtype")
    made = {name: code.Captioner(folder, max_new_tokens=6,
                                 **{k: v for k, v in configs.CAPTIONING_VARIANTS[name].items()
                                    if k in keys})
            for name in configs.EXACT_VARIANTS}
    decoded = [made["naive"].decode(p.read_bytes()) for p in images[:3]]
    captions = {name: c.caption(decoded, LABELS[1:4]) for name, c in made.items()}
    assert captions["fastest"] == captions["naive"] == captions["batched"]
    assert made["naive"].model.config.vision_config.hidden_size == 768  # full size, not tiny


def test_unknown_settings_are_named(code, tiny):
    with pytest.raises(ValueError, match="strategy must be one of"):
        code.Captioner(tiny, strategy="fast please")
    with pytest.raises(ValueError, match="dtype must be one of"):
        code.Captioner(tiny, dtype="float8")


def test_stand_in_has_blip_base_sizes():
    vocab = blip.stand_in_vocabulary()
    assert len(vocab) == blip.BERT_VOCAB_SIZE == 30522 and len(set(vocab)) == len(vocab)
    assert [vocab[i] for i in (0, 100, 101, 102, 103)] == [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert {"bread", "dairy", "noodles", "dessert"} <= set(vocab)
    assert blip.BASE_VISION["image_size"] == 384 and blip.BASE_TEXT["vocab_size"] == 30524
    meta = blip.current()
    if meta and meta.get("size") != "tiny":  # what the server loads: BLIP-base's sizes
        config = json.loads((model_dir("conditional_captioning") / "blip" / "config.json")
                            .read_text())
        for key, value in blip.BASE_VISION.items():
            assert config["vision_config"][key] == value, key
        for key, value in blip.BASE_TEXT.items():
            assert config["text_config"][key] == value, key


def test_stand_in_is_local_and_says_so(tmp_path, code):
    meta = blip.ensure_blip(tmp_path, source=blip.STAND_IN_TINY)
    assert meta["stand_in"] is True and meta["size"] == "tiny"
    saved = json.loads((tmp_path / code.WEIGHTS_META).read_text())
    assert saved == meta
    assert (tmp_path / code.WEIGHTS_FOLDER / "config.json").exists()
    tokenizer_vocab = (tmp_path / code.WEIGHTS_FOLDER / "tokenizer.json").read_text()
    for word in ("bread", "dairy", "noodles", "dessert"):
        assert f'"{word}"' in tokenizer_vocab  # label words are real tokens, not [UNK]


def test_unreachable_source_falls_back_to_the_stand_in(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may leave this machine
    meta = blip.ensure_blip(tmp_path, source="no-such-org/no-such-model")
    assert meta["stand_in"] is True
    out = capsys.readouterr().out
    assert "Could not fetch BLIP" in out and "RANDOM" in out


def _timed(batch: int, images: int, encoder: float, decoder: float) -> dict:
    return {"batch": batch, "images": images,
            "seconds_per_image": {"vision encoder": encoder, "text decoder": decoder}}


def test_explain_batching_calls_each_part_from_its_ratio_and_not_on_a_handful():
    from tritonlab.measuring import captioning

    text = captioning.explain_batching(_timed(1, 4, 0.6, 0.9), _timed(8, 8, 0.6, 0.3))
    assert text.splitlines() == [
        "vision encoder: 0.60 s per image alone, 0.60 in a batch of 8 (1.0x): about the same "
        "per image either way",
        "text decoder: 0.90 s per image alone, 0.30 in a batch of 8 (3.0x): cheaper per image "
        "in a batch"]
    few = captioning.explain_batching(_timed(1, 2, 0.6, 0.9), _timed(8, 8, 0.6, 0.3))
    assert few.endswith("(3.0x): 2 and 8 images timed, too few to call")
    assert "cheaper" not in few


def test_in_process_keeps_its_worker_and_starts_afresh_once_it_died(repository):
    """Measurements of one variant share one worker process (its captioner loaded once), each at
    its own thread count; a worker that died is replaced on the next call; `stop_workers` ends
    them and says how much memory they held. On the tiny stand-in: the mechanics, not the
    timings."""
    from tritonlab.measuring import captioning

    try:
        first = captioning.in_process("fastest", batch=2, repository=repository)
        second = captioning.in_process("fastest", batch=1, threads=1, repository=repository)
        assert second["worker"] == first["worker"] and psutil.pid_exists(first["worker"])
        assert (first["images"], second["images"], second["threads"]) == (2, 1, 1)
        assert len(first["captions"]) == 2 and second["captions"][0].startswith("a photo of")
        os.kill(first["worker"], signal.SIGKILL)
        dying = psutil.Process(first["worker"])
        # until all its threads are gone (torch's end after the main one): only then can its
        # parent see that it ended
        task = f"/proc/{dying.pid}/task"
        while dying.status() != psutil.STATUS_ZOMBIE or len(os.listdir(task)) > 1:
            time.sleep(0.1)
        third = captioning.in_process("fastest", batch=1, repository=repository)
        assert third["worker"] != first["worker"] and third["captions"]
    finally:
        held = captioning.stop_workers()
    assert held > 50 * 2**20  # torch alone is more than 50 MiB resident
    assert not psutil.pid_exists(third["worker"]) and captioning.stop_workers() == 0
