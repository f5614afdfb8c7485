"""Conditional captioning for Triton's Python backend: BLIP continues a prompt made from a label.

Inputs: INPUT_IMAGE (an encoded image, raw bytes or base64 text, decoded by the classifier's own
code) and FOOD_LABEL (the classifier's label). Output: CAPTION. The label becomes the text prompt
that BLIP continues, e.g. "a photo of bread," -> "a photo of bread, a loaf on a wooden board".

Every image of every request in Triton's batch is captioned together. Prompts of different token
lengths cannot share one generate() call exactly (padding would shift BLIP's positions, or leave
a separator inside the shorter prompts), so the batch is split by prompt length: one batched call
per length, each image captioned exactly as it would be alone.
"""

import importlib.util
import json
import os
import sys

import numpy as np
import torch

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (tests, notebooks, benchmarks)
    pb_utils = None

#: The one place the prompt is made: BLIP continues this text.
PROMPT_TEMPLATE = "a photo of {label},"
WEIGHTS_FOLDER = "blip"        # save_pretrained() output of model and processor
WEIGHTS_META = "blip.json"     # where they came from, and whether they are a stand-in
HERE = os.path.dirname(os.path.abspath(__file__))


def prompt_for(label) -> str:
    """The prompt for one label (bytes or str): 'Noodles/Pasta' -> 'a photo of noodles/pasta,'."""
    if isinstance(label, (bytes, np.bytes_)):
        label = bytes(label).decode("utf-8", "replace")
    return PROMPT_TEMPLATE.format(label=" ".join(str(label).split()).lower())


def _load_classifier_code():
    """The classifier's model.py: one implementation of image decoding for both models."""
    path = os.path.join(HERE, "..", "..", "food_classifier", "1", "model.py")
    name = "food_classifier_shared_code"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


image_code = _load_classifier_code()
BadImage = image_code.BadImage


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
        meta_path = os.path.join(folder, WEIGHTS_META)
        if not os.path.exists(meta_path):
            raise FileNotFoundError(f"no BLIP weights in {folder}: run `make install` "
                                    "(tritonlab.captioning.ensure_blip())")
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
        return image_code.open_image(image_code.to_image_bytes(value), self.min_side)

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


class TritonPythonModel:
    """Triton's entry point: one object per model instance."""

    def initialize(self, args):
        image_code.exit_with_server()
        params = image_code.config_parameters(args)
        device = image_code.instance_device(args)
        self.captioner = Captioner(HERE, device=device,
                                   num_threads=image_code.cpu_threads(args),
                                   max_new_tokens=int(params.get("max_new_tokens", "20") or 20),
                                   num_beams=int(params.get("num_beams", "1") or 1))
        name = args["model_instance_name"]
        print(f"[{name}] BLIP captioning on {device}, {torch.get_num_threads()} threads; "
              f"weights from {self.captioner.meta.get('source')}", flush=True)
        if self.captioner.stand_in:
            print(f"[{name}] WARNING: serving a STAND-IN BLIP (tiny, seeded random weights): its "
                  "captions are the prompt followed by random words.", flush=True)

    def execute(self, requests):
        responses = [None] * len(requests)
        images, labels, owners = [], [], []
        for i, request in enumerate(requests):
            try:
                image_t = pb_utils.get_input_tensor_by_name(request, "INPUT_IMAGE")
                label_t = pb_utils.get_input_tensor_by_name(request, "FOOD_LABEL")
                if image_t is None or label_t is None:
                    raise BadImage("the request needs both INPUT_IMAGE and FOOD_LABEL")
                values = image_t.as_numpy().reshape(-1)
                names = label_t.as_numpy().reshape(-1)
                if len(values) != len(names):
                    raise BadImage(f"{len(values)} images but {len(names)} labels")
                decoded = []
                for k, value in enumerate(values):
                    try:
                        decoded.append(self.captioner.decode(value))
                    except BadImage as exc:
                        raise BadImage(f"INPUT_IMAGE element {k}: {exc}") from None
            except BadImage as exc:
                responses[i] = pb_utils.InferenceResponse(error=image_code.client_error(str(exc)))
                continue
            owners.append((i, len(images), len(decoded)))
            images.extend(decoded)
            labels.extend(names)
        if not images:
            return responses
        try:
            captions = self.captioner.caption(images, labels)
        except Exception as exc:  # generation failed: answer every request that reached it
            for i, _, _ in owners:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"captioning failed: {exc}"))
            return responses
        for i, start, count in owners:
            out = np.array([c.encode() for c in captions[start:start + count]],
                           dtype=object).reshape(count, 1)
            responses[i] = pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("CAPTION", out)])
        return responses

    def finalize(self):
        self.captioner = None
