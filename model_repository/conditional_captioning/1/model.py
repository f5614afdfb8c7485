"""Conditional captioning for Triton's Python backend: the backend's contract, and nothing else.

Inputs: INPUT_IMAGE (an encoded image, raw bytes or base64 text) and FOOD_LABEL (the
classifier's label, in the food_captioning ensemble). Output: CAPTION, which continues a prompt
made from the label. Every image of every request in Triton's batch is captioned together; each
request gets its own response, and a bad image fails only its own request.

Beside this file, in the same version folder (on the import path Triton's Python backend sets):
`blip_captioner.py` (the prompt and BLIP), and generated copies of food_classifier's
`image_decoding.py` and `backend_helpers.py`, so that this folder works alone wherever the
repository is mounted.
"""

import os

import numpy as np

import backend_helpers
import blip_captioner
import image_decoding

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (tests, notebooks, benchmarks)
    pb_utils = None

HERE = os.path.dirname(os.path.abspath(__file__))


class TritonPythonModel:
    """Triton's entry point: one object per model instance."""

    def initialize(self, args):
        backend_helpers.exit_with_server()
        backend_helpers.check_numpy()
        params = backend_helpers.config_parameters(args)
        device = backend_helpers.instance_device(args)
        self.captioner = blip_captioner.Captioner(
            HERE, device=device, num_threads=backend_helpers.cpu_threads(args),
            max_new_tokens=int(params.get("max_new_tokens", "20") or 20),
            num_beams=int(params.get("num_beams", "1") or 1),
            strategy=params.get("strategy") or "encode_then_decode",
            vision_batch=int(params.get("vision_batch", "4") or 4),
            attention=params.get("attention") or "sdpa",
            dtype=params.get("dtype") or "float32")
        name = args["model_instance_name"]
        print(f"[{name}] BLIP captioning on {device}: {self.captioner.settings}; "
              f"weights from {self.captioner.meta.get('source')}", flush=True)
        if self.captioner.stand_in:
            print(f"[{name}] WARNING: serving a STAND-IN BLIP ({self.captioner.meta.get('size')}"
                  ", seeded random weights): its captions are the prompt followed by random "
                  "words.", flush=True)

    def request_inputs(self, request) -> tuple[list, list]:
        """The decoded images and the labels of one request; BadImage says what is wrong."""
        image_t = pb_utils.get_input_tensor_by_name(request, "INPUT_IMAGE")
        label_t = pb_utils.get_input_tensor_by_name(request, "FOOD_LABEL")
        if image_t is None or label_t is None:
            raise image_decoding.BadImage("the request needs both INPUT_IMAGE and FOOD_LABEL")
        values, labels = image_t.as_numpy().reshape(-1), label_t.as_numpy().reshape(-1)
        if len(values) != len(labels):
            raise image_decoding.BadImage(f"{len(values)} images but {len(labels)} labels")
        images = []
        for k, value in enumerate(values):
            try:
                images.append(self.captioner.decode(value))
            except image_decoding.BadImage as exc:
                raise image_decoding.BadImage(f"INPUT_IMAGE element {k}: {exc}") from None
        return images, list(labels)

    def execute(self, requests):
        responses = [None] * len(requests)
        images, labels, owners = [], [], []
        for i, request in enumerate(requests):
            try:
                decoded, names = self.request_inputs(request)
            except image_decoding.BadImage as exc:  # this request alone fails
                responses[i] = pb_utils.InferenceResponse(
                    error=backend_helpers.client_error(str(exc)))
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
