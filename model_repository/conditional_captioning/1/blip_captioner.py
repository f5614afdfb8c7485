"""BLIP conditional captioning: a caption that continues a prompt made from a food label,
e.g. "a photo of bread," -> "a photo of bread, a loaf on a wooden board".

BLIP captions in two parts: a vision encoder (a ViT) turns each image into 577 embeddings, and a
text decoder (BERT-like, with cross-attention to those embeddings) generates the caption token
by token. How a batch is run is the `strategy`:

- 'generate_per_image': one `model.generate()` per image, as a first-written model does;
- 'generate_per_prompt_length': one `model.generate()` per prompt length. Prompts of different
  token lengths cannot share one call exactly (padding would shift BLIP's positions, or leave a
  separator inside the shorter prompts), so each image is still captioned exactly as alone;
- 'encode_then_decode' (served): the vision encoder on chunks of `vision_batch` images, then
  one text-decoder `generate()` for the whole batch on those embeddings, the prompts padded on
  the left and masked (the decoder's positions follow the mask, so each image still gets the
  caption it gets alone: the tests check it). BLIP's own generate() does the same two steps;
  here the encoder runs on small chunks, where its attention's score matrices stay in the CPU's
  caches, and the decoder on the whole batch, where each generated token reads the decoder's
  weights once for every image instead of once per image or per prompt length.

`attention` 'sdpa' runs the vision encoder's attention through torch's fused
`scaled_dot_product_attention` (transformers 5.24 offers only its 'eager' attention for BLIP);
'eager' keeps transformers' own. `dtype` 'bfloat16' is an opt-in reduced-precision variant: its
captions may differ from float32's, so it is reported beside the others, never served by default.
Plain Python: no Triton needed.
"""

from __future__ import annotations

import json
import os
import time

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


STRATEGIES = ("generate_per_image", "generate_per_prompt_length", "encode_then_decode")
ATTENTION = ("eager", "sdpa")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _sdpa_attention(self, hidden_states, **kwargs):
    """BlipAttention.forward with the attention in torch's fused kernel: the same inputs,
    weights and scale as transformers' eager softmax(QK^T * scale) V."""
    batch, tokens, width = hidden_states.size()
    q, k, v = (self.qkv(hidden_states)
               .reshape(batch, tokens, 3, self.num_heads, width // self.num_heads)
               .permute(2, 0, 3, 1, 4))
    context = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=self.scale)
    return self.projection(context.permute(0, 2, 1, 3).reshape(batch, tokens, width)), None


class Captioner:
    """BLIP loaded from a local folder (never from the hub at serving time).

    `last_timing` holds the seconds the latest `caption()` spent in the vision encoder and in
    the text decoder (for 'encode_then_decode'; 'generate' for the other strategies)."""

    def __init__(self, folder: str, device: str = "cpu", num_threads: int = 0,
                 max_new_tokens: int = 20, num_beams: int = 1,
                 strategy: str = "encode_then_decode", vision_batch: int = 4,
                 attention: str = "sdpa", dtype: str = "float32"):
        for name, value, allowed in (("strategy", strategy, STRATEGIES),
                                     ("attention", attention, ATTENTION),
                                     ("dtype", dtype, tuple(DTYPES))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        os.environ["HF_HUB_OFFLINE"] = "1"  # weights come from `folder` only
        from transformers import BlipForConditionalGeneration, BlipProcessor
        from transformers.models.blip.modeling_blip import BlipAttention
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
        self.dtype = DTYPES[dtype]
        self.model = BlipForConditionalGeneration.from_pretrained(weights)
        self.model = self.model.to(device=device, dtype=self.dtype).eval()
        if attention == "sdpa":
            for module in self.model.vision_model.modules():
                if isinstance(module, BlipAttention):
                    module.forward = _sdpa_attention.__get__(module)
        self.device = torch.device(device)
        self.max_new_tokens, self.num_beams = max_new_tokens, num_beams
        self.strategy, self.vision_batch = strategy, max(1, vision_batch)
        self.settings = {"strategy": strategy, "vision_batch": self.vision_batch,
                         "attention": attention, "dtype": dtype, "threads": self.threads,
                         "max_new_tokens": max_new_tokens, "num_beams": num_beams}
        self.last_timing: dict[str, float] = {}
        size = self.processor.image_processor.size
        self.min_side = int(min(size.get("height", 384), size.get("width", 384)))

    def decode(self, value):
        """One input element (raw bytes or base64 text) to an RGB image."""
        return image_decoding.open_image(image_decoding.to_image_bytes(value),
                                       self.min_side)

    def _generate(self, pixels, input_ids):
        """BLIP's own generate(): vision encoder and text decoder in one call."""
        return self.model.generate(pixel_values=pixels, input_ids=input_ids,
                                   attention_mask=torch.ones_like(input_ids),
                                   max_new_tokens=self.max_new_tokens, num_beams=self.num_beams)

    def _encode(self, pixels):
        """The vision encoder's embeddings, `vision_batch` images at a time."""
        vision = self.model.vision_model
        return torch.cat([vision(pixel_values=pixels[k:k + self.vision_batch])[0]
                          for k in range(0, len(pixels), self.vision_batch)])

    def _decode(self, embeds, prompts: list[list[int]]):
        """The text decoder's generate() on image embeddings, as BLIP's generate() calls it
        (the prompt's [CLS] replaced by the decoder's start token, its final [SEP] dropped),
        for prompts of any lengths at once: padded on the left, masked."""
        text = self.model.config.text_config
        seqs = [[text.bos_token_id] + seq[1:-1] for seq in prompts]
        width = max(map(len, seqs))
        input_ids = torch.tensor([[text.pad_token_id] * (width - len(s)) + s for s in seqs],
                                 device=self.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs],
                            device=self.device)
        return self.model.text_decoder.generate(
            input_ids=input_ids, attention_mask=mask,
            eos_token_id=text.sep_token_id, pad_token_id=text.pad_token_id,
            encoder_hidden_states=embeds,
            encoder_attention_mask=torch.ones(embeds.shape[:-1], dtype=torch.long,
                                              device=embeds.device),
            max_new_tokens=self.max_new_tokens, num_beams=self.num_beams)

    @torch.inference_mode()
    def caption(self, images: list, labels: list) -> list[str]:
        """A caption per (image, label), continuing each label's prompt."""
        tokenizer = self.processor.tokenizer
        prompts = [prompt_for(label) for label in labels]
        ids = tokenizer(prompts)["input_ids"]
        pixels = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device, self.dtype)
        outputs: dict[int, torch.Tensor] = {}
        began = time.perf_counter()
        if self.strategy == "generate_per_image":
            for i, seq in enumerate(ids):
                outputs[i] = self._generate(pixels[i:i + 1],
                                            torch.tensor([seq], device=self.device))[0]
            self.last_timing = {"generate": time.perf_counter() - began}
        elif self.strategy == "generate_per_prompt_length":
            by_length: dict[int, list[int]] = {}
            for i, seq in enumerate(ids):
                by_length.setdefault(len(seq), []).append(i)
            for rows in by_length.values():
                input_ids = torch.tensor([ids[i] for i in rows], device=self.device)
                outputs.update(zip(rows, self._generate(pixels[rows], input_ids)))
            self.last_timing = {"generate": time.perf_counter() - began}
        else:
            embeds = self._encode(pixels)
            encoded = time.perf_counter()
            outputs = dict(enumerate(self._decode(embeds, ids)))  # pads: special, skipped
            self.last_timing = {"vision encoder": encoded - began,
                                "text decoder": time.perf_counter() - encoded}
        captions = []
        for i, prompt in enumerate(prompts):
            text = tokenizer.decode(outputs[i], skip_special_tokens=True)
            # The output starts with the prompt as the tokenizer spells it back
            # ("noodles / pasta"): put the prompt's own text there.
            spelled = tokenizer.decode(ids[i][:-1], skip_special_tokens=True)
            if text.startswith(spelled):
                text = prompt + text[len(spelled):]
            captions.append(" ".join(text.split()))
        return captions
