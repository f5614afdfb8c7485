"""BLIP weights for the captioning model: the real one from the Hugging Face Hub, or a stand-in.

Either way they are saved with `save_pretrained` into model_repository/conditional_captioning/
1/blip/ and loaded from there by `from_pretrained(folder)` with the hub switched off, so Triton
never downloads anything at load time.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from ..common import atomic_write, log
from .repository import load_model_module, model_dir

HUB_ID = "Salesforce/blip-image-captioning-base"
STAND_IN = "stand-in"            # offline: BLIP-base's architecture and sizes, random weights
STAND_IN_TINY = "stand-in-tiny"  # offline, for tests that measure nothing: hidden size 32
STAND_IN_SEED = 7

BANNER = ("*" * 78 + "\n"
          "STAND-IN BLIP: the captioning model has BLIP-base's architecture and sizes but seeded\n"
          "RANDOM weights and a made-up vocabulary (the real model could not be fetched). Each\n"
          "caption is the prompt followed by RANDOM WORDS. Random weights never emit the end\n"
          "token, so every caption runs to max_new_tokens: its timings are an upper bound for\n"
          "that token budget. The pipeline, batching and the work per token are real.\n" + "*" * 78)
BANNER_TINY = ("*" * 78 + "\n"
               "TINY STAND-IN BLIP (hidden size 32, one layer, seeded random weights): for tests\n"
               "only. Its captions are random words and its timings mean nothing.\n" + "*" * 78)

#: Words of the stand-in's vocabulary: food-ish, so the prompts are real tokens.
WORDS = ("a an the of on in with and photo plate bowl table wooden white red green fresh hot "
         "slice piece served close up top view bread cheese cake egg fried meat noodles pasta "
         "rice fish soup salad fruit vegetable sauce spoon fork glass dish kitchen dairy product "
         "dessert food seafood").split()

#: Salesforce/blip-image-captioning-base's configuration, from its published config.json:
#: ViT-B/16 vision encoder at 384x384, BERT-base text decoder with cross-attention.
BASE_VISION = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
               "num_attention_heads": 12, "image_size": 384, "patch_size": 16}
BASE_TEXT = {"vocab_size": 30524, "hidden_size": 768, "intermediate_size": 3072,
             "num_hidden_layers": 12, "num_attention_heads": 12, "encoder_hidden_size": 768,
             "max_position_embeddings": 512}
#: Its tokenizer: bert-base-uncased's 30522 WordPiece tokens ([PAD] 0, [UNK] 100, [CLS] 101,
#: [SEP] 102, [MASK] 103), then [DEC] (30522, the decoder's start) and [ENC] (30523).
BERT_VOCAB_SIZE = 30522
BERT_SPECIALS = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}

TINY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
               "num_attention_heads": 2, "image_size": 64, "patch_size": 16}
TINY_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
             "num_attention_heads": 2, "encoder_hidden_size": 32, "max_position_embeddings": 64}


def code(repository: Path | None = None):
    """conditional_captioning's `blip_captioner.py` (of `repository`, default the served one):
    the prompt template and the Captioner."""
    return load_model_module("conditional_captioning", repository=repository).blip_captioner


def blip_source() -> str:
    return os.environ.get("BLIP_WEIGHTS", HUB_ID)


def _made_up_words(count: int, seed: int) -> list[str]:
    """`count` distinct pronounceable non-words ("bakore", "tiluma"), in a seeded order."""
    import itertools
    import random

    syllables = [c + v for c in "bdfghklmnprstvz" for v in "aeiou"]
    words = ["".join(s) for n in (2, 3) for s in itertools.product(syllables, repeat=n)]
    words = [w for w in words if w not in WORDS]
    random.Random(seed).shuffle(words)
    return words[:count]


def stand_in_vocabulary(seed: int = STAND_IN_SEED) -> list[str]:
    """A vocabulary of BERT's size with BERT's special tokens at BERT's ids, the course's food
    words, and made-up words for the rest.

    No package the course installs ships bert-base-uncased's WordPiece vocabulary, and the hub
    is out of reach; what the timings need is the real vocabulary *size* (the text decoder's
    embedding and its 30524-way output layer, computed at every generated token), so the
    vocabulary is padded to that size with words that read as noise, as the captions are.
    """
    fixed = dict(BERT_SPECIALS)
    fixed.update({i: f"[unused{i - 1}]" for i in range(1, 100)})
    words = iter(list(dict.fromkeys(WORDS)) + [",", "/", "."]
                 + _made_up_words(BERT_VOCAB_SIZE, seed))
    return [fixed.get(i) or next(words) for i in range(BERT_VOCAB_SIZE)]


def build_stand_in(target: Path, seed: int = STAND_IN_SEED, size: str = "base") -> None:
    """A BlipForConditionalGeneration with seeded random weights and its own tokenizer, saved to
    `target` with save_pretrained (about 900 MB at size 'base', 230 KB at 'tiny').

    size 'base': Salesforce/blip-image-captioning-base's architecture and sizes (BASE_VISION,
    BASE_TEXT, a vocabulary of its size, 384x384 images); 'tiny': hidden size 32, one layer,
    64x64 images, the course's words only (for tests that measure nothing).
    """
    import torch
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    if size not in ("base", "tiny"):
        raise ValueError(f"size must be 'base' or 'tiny', not {size!r}")
    target.mkdir(parents=True, exist_ok=True)
    vocab = target / "vocab.txt"
    if size == "base":
        words = stand_in_vocabulary(seed)
    else:
        words = (list(BERT_SPECIALS.values()) + list(dict.fromkeys(WORDS)) + [",", "/", "."])
    vocab.write_text("\n".join(words) + "\n")
    # `vocab=` (a path): `vocab_file=` would be ignored silently and every word become [UNK]
    tokenizer = BertTokenizerFast(vocab=str(vocab), bos_token="[DEC]", do_lower_case=True)
    if size == "base":
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    vision = BASE_VISION if size == "base" else TINY_VISION
    side = vision["image_size"]
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": side, "width": side}),
        tokenizer=tokenizer)
    ids = tokenizer.convert_tokens_to_ids
    text = dict(BASE_TEXT) if size == "base" else dict(TINY_TEXT, vocab_size=len(tokenizer))
    text.update(bos_token_id=ids("[DEC]"), pad_token_id=ids("[PAD]"),
                sep_token_id=ids("[SEP]"), eos_token_id=ids("[SEP]"))
    config = BlipConfig(vision_config=vision, text_config=text)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    model.save_pretrained(target)
    processor.save_pretrained(target)
    vocab.unlink()  # the tokenizer saved its own copy


def readable_by_transformers_4(folder: Path) -> bool:
    """Rewrite the tokenizer_config.json that transformers 5 saved in `folder` into the form
    transformers 4 reads too; True if it changed. transformers 5 writes the extra special tokens
    (BLIP's [ENC]) as a list under `extra_special_tokens`, where transformers 4 expects a mapping
    there and fails to load the tokenizer ("'list' object has no attribute 'keys'"); both read
    the list as `additional_special_tokens`. The GPU node's Triton image has transformers 4.57
    (its Python 3.10 cannot have 5), the Jupyter image and this machine 5.x, and both load the
    same saved BLIP (found by `make node-check`)."""
    path = Path(folder) / "tokenizer_config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    extra = config.get("extra_special_tokens")
    if not isinstance(extra, list):
        return False
    config.pop("extra_special_tokens")
    config["additional_special_tokens"] = list(dict.fromkeys(
        [*config.get("additional_special_tokens", []), *extra]))
    atomic_write(path, json.dumps(config, indent=2) + "\n")
    os.chmod(path, 0o644)
    return True


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def hub_unreachable(timeout: float = 3.0) -> str:
    """Why the Hugging Face Hub cannot be reached ('' when it can), asked once and quickly:
    without it, transformers retries every file for minutes before giving up."""
    import requests

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        requests.head(endpoint, timeout=timeout, allow_redirects=True)
    except requests.RequestException as exc:
        return f"{endpoint} did not answer ({type(exc).__name__})"
    return ""


def download(target: Path, hub_id: str) -> None:
    """The real BLIP from the hub (about 1 GB), saved to `target`."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    BlipProcessor.from_pretrained(hub_id).save_pretrained(target)
    BlipForConditionalGeneration.from_pretrained(hub_id).save_pretrained(target)


def current(folder: Path | None = None) -> dict | None:
    folder = Path(folder or model_dir("conditional_captioning"))
    mod = code()
    try:
        meta = json.loads((folder / mod.WEIGHTS_META).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("stand_in") and meta.get("size") not in ("base", "tiny"):
        return None  # a stand-in from before the full-size one: rebuilt
    return meta if (folder / mod.WEIGHTS_FOLDER / "config.json").exists() else None


def ensure_blip(folder: Path | None = None, source: str | None = None, force: bool = False
                ) -> dict:
    """Make sure the captioning model has BLIP weights; returns their metadata.

    Kept if present (unless `force`, or `source` asks for the other stand-in size); else
    fetched from `source` (a hub id or a local folder saved with save_pretrained; default
    BLIP_WEIGHTS or the base model), or a stand-in of BLIP-base's size is built when that fails
    or `source` is 'stand-in' ('stand-in-tiny': the tiny one, for tests that measure nothing).
    The metadata says `size`: 'base' or 'tiny' for a stand-in, 'real' for fetched weights.
    """
    folder = Path(folder or model_dir("conditional_captioning"))
    mod = code()
    meta = None if force else current(folder)
    wanted = {STAND_IN: "base", STAND_IN_TINY: "tiny"}.get(source or "")
    if meta is not None and meta.get("stand_in") and wanted and meta.get("size") != wanted:
        meta = None  # the other stand-in size was asked for
    if meta is None:
        source = source or blip_source()
        tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".blip-"))
        stand_in = source in (STAND_IN, STAND_IN_TINY)
        size = {STAND_IN_TINY: "tiny"}.get(source, "base" if stand_in else "real")
        _quiet_transformers()
        offline = "" if stand_in or Path(source).is_dir() else hub_unreachable()
        try:
            if offline:
                raise ConnectionError(f"the Hugging Face Hub cannot be reached: {offline}")
            if stand_in:
                log.info(f"building the {size} BLIP stand-in (seeded random weights) ...")
                build_stand_in(tmp, size=size)
            elif Path(source).is_dir():
                shutil.copytree(source, tmp, dirs_exist_ok=True)
            else:
                download(tmp, source)
        except Exception as exc:  # no network, no hub: build the stand-in, loudly
            log.warning(f"Could not fetch BLIP from {source}: {str(exc).splitlines()[0][:200]}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".blip-"))
            log.info("building the BLIP stand-in (BLIP-base's sizes, seeded random weights) ...")
            build_stand_in(tmp)
            stand_in, source, size = True, STAND_IN, "base"
        readable_by_transformers_4(tmp)
        final = folder / mod.WEIGHTS_FOLDER
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        os.chmod(final, 0o755)  # readable by a container's user, like the rest of the repository
        for path in final.iterdir():
            os.chmod(path, 0o644)
        meta = {"source": source, "stand_in": stand_in, "size": size,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        atomic_write(folder / mod.WEIGHTS_META, json.dumps(meta, indent=2) + "\n")
    elif readable_by_transformers_4(folder / mod.WEIGHTS_FOLDER):  # saved before that fix
        log.info(f"{folder / mod.WEIGHTS_FOLDER}: tokenizer config rewritten for transformers 4")
    log.info(banner(meta))
    return meta


def banner(meta: dict) -> str:
    """What the served BLIP is, in a line, or a loud banner for a stand-in."""
    if not meta.get("stand_in"):
        return f"BLIP weights from {meta['source']}."
    return BANNER_TINY if meta.get("size") == "tiny" else BANNER
