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
STAND_IN = "stand-in"
STAND_IN_SEED = 7

BANNER = ("*" * 78 + "\n"
          "STAND-IN BLIP: the captioning model is a tiny BLIP with seeded RANDOM weights and a\n"
          "small local vocabulary (the real one could not be fetched). Each caption is the prompt\n"
          "followed by RANDOM WORDS; the pipeline, batching and timing are real.\n" + "*" * 78)

#: Words of the stand-in's vocabulary: food-ish, so its noise reads like a caption.
WORDS = ("a an the of on in with and photo plate bowl table wooden white red green fresh hot "
         "slice piece served close up top view bread cheese cake egg fried meat noodles pasta "
         "rice fish soup salad fruit vegetable sauce spoon fork glass dish kitchen dairy product "
         "dessert food seafood").split()


def code():
    """conditional_captioning's `blip_captioner.py`: the prompt template and the Captioner."""
    return load_model_module("conditional_captioning").blip_captioner


def blip_source() -> str:
    return os.environ.get("BLIP_WEIGHTS", HUB_ID)


def build_stand_in(target: Path, seed: int = STAND_IN_SEED) -> None:
    """A tiny BlipForConditionalGeneration with its own tokenizer, saved to `target`."""
    import torch
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    target.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    vocab = target / "vocab.txt"
    vocab.write_text("\n".join(specials + list(dict.fromkeys(WORDS)) + [",", "/", "."]) + "\n")
    # `vocab=` (a path): `vocab_file=` would be ignored silently and every word become [UNK]
    tokenizer = BertTokenizerFast(vocab=str(vocab), bos_token="[DEC]", do_lower_case=True)
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 64, "width": 64}),
                              tokenizer=tokenizer)
    ids = tokenizer.convert_tokens_to_ids
    config = BlipConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 64, "patch_size": 16},
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 1, "num_attention_heads": 2,
                     "encoder_hidden_size": 32, "bos_token_id": ids("[DEC]"),
                     "pad_token_id": ids("[PAD]"), "sep_token_id": ids("[SEP]"),
                     "eos_token_id": ids("[SEP]"), "max_position_embeddings": 64})
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    model.save_pretrained(target)
    processor.save_pretrained(target)
    vocab.unlink()  # the tokenizer saved its own copy


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
    return meta if (folder / mod.WEIGHTS_FOLDER / "config.json").exists() else None


def ensure_blip(folder: Path | None = None, source: str | None = None, force: bool = False
                ) -> dict:
    """Make sure the captioning model has BLIP weights; returns their metadata.

    Kept if present (unless `force`); else fetched from `source` (a hub id or a local folder
    saved with save_pretrained; default BLIP_WEIGHTS or the base model), or a stand-in is built
    when that fails or `source` is 'stand-in'.
    """
    folder = Path(folder or model_dir("conditional_captioning"))
    mod = code()
    meta = None if force else current(folder)
    if meta is None:
        source = source or blip_source()
        tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".blip-"))
        stand_in = source == STAND_IN
        _quiet_transformers()
        offline = "" if stand_in or Path(source).is_dir() else hub_unreachable()
        try:
            if offline:
                raise ConnectionError(f"the Hugging Face Hub cannot be reached: {offline}")
            if stand_in:
                build_stand_in(tmp)
            elif Path(source).is_dir():
                shutil.copytree(source, tmp, dirs_exist_ok=True)
            else:
                download(tmp, source)
        except Exception as exc:  # no network, no hub: build the stand-in, loudly
            log.warning(f"Could not fetch BLIP from {source}: {str(exc).splitlines()[0][:200]}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".blip-"))
            build_stand_in(tmp)
            stand_in, source = True, STAND_IN
        final = folder / mod.WEIGHTS_FOLDER
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        os.chmod(final, 0o755)  # readable by a container's user, like the rest of the repository
        for path in final.iterdir():
            os.chmod(path, 0o644)
        meta = {"source": source, "stand_in": stand_in,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        atomic_write(folder / mod.WEIGHTS_META, json.dumps(meta, indent=2) + "\n")
    log.info(BANNER if meta["stand_in"] else f"BLIP weights from {meta['source']}.")
    return meta
