"""The captioning model's own code in-process: prompts, batching by prompt length, weights."""

from __future__ import annotations

import json

import pytest

from tritonlab.assets import blip
from tritonlab.assets.repository import model_dir


@pytest.fixture(scope="module")
def code():
    return blip.code()


@pytest.fixture(scope="module")
def captioner(code, weights_ready):
    return code.Captioner(str(model_dir("conditional_captioning")), max_new_tokens=8)


def test_prompt_template_in_one_place(code):
    assert code.PROMPT_TEMPLATE == "a photo of {label},"
    assert code.prompt_for(b"Noodles/Pasta") == "a photo of noodles/pasta,"
    assert code.prompt_for("  Dairy   product ") == "a photo of dairy product,"


def test_caption_continues_the_prompt(captioner, images):
    [caption] = captioner.caption([captioner.decode(images[0].read_bytes())], ["Bread"])
    assert caption.startswith("a photo of bread,")
    assert len(caption) > len("a photo of bread,")


def test_mixed_labels_caption_as_each_would_alone(captioner, images):
    """Prompts of different token lengths in one batch must not change any caption."""
    labels = ["Bread", "Dairy product", "Noodles/Pasta", "Egg", "Vegetable/Fruit", "Bread"]
    decoded = [captioner.decode(p.read_bytes()) for p in images]
    together = captioner.caption(decoded, labels)
    alone = [captioner.caption([img], [label])[0] for img, label in zip(decoded, labels)]
    assert together == alone
    tokenizer = captioner.processor.tokenizer
    lengths = {len(tokenizer(blip.code().prompt_for(lb))["input_ids"]) for lb in labels}
    assert len(lengths) > 1, "the test needs prompts of different lengths"


def test_stand_in_is_local_and_says_so(tmp_path, code):
    meta = blip.ensure_blip(tmp_path, source=blip.STAND_IN)
    assert meta["stand_in"] is True
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
