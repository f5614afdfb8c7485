"""BLIP conditional captioning: a caption that continues a prompt made from a food label,
e.g. "a photo of bread," -> "a photo of bread, a loaf on a wooden board".

Prompts of different token lengths cannot share one generate() call exactly (padding would shift
BLIP's positions, or leave a separator inside the shorter prompts), so a batch is split by
prompt length: one batched call per length, each image captioned exactly as it would be alone.
Plain Python: no Triton needed.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

import image_decoding

#: The one place the prompt is made: BLIP continues this text.
PROMPT_TEMPLATE = "a photo of {label},"
WEIGHTS_FOLDER = "blip"        # save_pretrained() output of model and processor
WEIGHTS_META = "blip.json"     # where they came from, and whether they are a stand-in


def prompt_for(label) -> str:
    """The prompt for one label (bytes or str): 'Noodles/Pasta' -> 'a photo of noodles/pasta,'."""
    if isinstance(label, (bytes, np.bytes_)):
        label = bytes(label).decode("utf-8", "replace")
    return PROMPT_TEMPLATE.format(label=" ".join(str(label).split()).lower())


class Captioner:
    """BLIP loaded from a local folder (never from the hub at serving time)."""

    def __init__(self, folder: str, device: str = "cpu", num_threads: int = 0,
                 max_new_tokens: int = 20, num_beams: int = 1):
        os.environ["HF_HUB_OFFLINE"] = "1"  # weights come from `folder` only
        from transformers import BlipForConditionalGeneration, BlipProcessor
        from transformers.utils import logging

        logging.disable_progress_bar()

        if num_threads > 0:
            torch.set_num_threads(num_threads)
        self.threads = torch.get_num_threads()
        meta_path = os.path.join(folder, WEIGHTS_META)
        if not os.path.exists(meta_path):
            raise FileNotFoundError(f"no BLIP weights in {folder}: run `make install` "
                                    "(tritonlab.assets.blip.ensure_blip())")
        with open(meta_path) as f:
            self.meta = json.load(f)
        self.stand_in = bool(self.meta.get("stand_in"))
        weights = os.path.join(folder, WEIGHTS_FOLDER)
        self.processor = BlipProcessor.from_pretrained(weights)
        self.model = BlipForConditionalGeneration.from_pretrained(weights).to(device).eval()
        self.device = torch.device(device)
        self.max_new_tokens, self.num_beams = max_new_tokens, num_beams
        size = self.processor.image_processor.size
        self.min_side = int(min(size.get("height", 384), size.get("width", 384)))

    def decode(self, value):
        """One input element (raw bytes or base64 text) to an RGB image."""
        return image_decoding.open_image(image_decoding.to_image_bytes(value),
                                       self.min_side)

    @torch.inference_mode()
    def caption(self, images: list, labels: list) -> list[str]:
        """A caption per (image, label), continuing each label's prompt."""
        tokenizer = self.processor.tokenizer
        prompts = [prompt_for(label) for label in labels]
        ids = tokenizer(prompts)["input_ids"]
        pixels = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device)
        by_length: dict[int, list[int]] = {}
        for i, seq in enumerate(ids):
            by_length.setdefault(len(seq), []).append(i)
        captions = [""] * len(prompts)
        for rows in by_length.values():
            input_ids = torch.tensor([ids[i] for i in rows], device=self.device)
            out = self.model.generate(pixel_values=pixels[rows], input_ids=input_ids,
                                      attention_mask=torch.ones_like(input_ids),
                                      max_new_tokens=self.max_new_tokens,
                                      num_beams=self.num_beams)
            for i, text in zip(rows, tokenizer.batch_decode(out, skip_special_tokens=True)):
                # The output starts with the prompt as the tokenizer spells it back
                # ("noodles / pasta"): put the prompt's own text there.
                spelled = tokenizer.decode(ids[i][:-1], skip_special_tokens=True)
                if text.startswith(spelled):
                    text = prompts[i] + text[len(spelled):]
                captions[i] = " ".join(text.split())
        return captions
