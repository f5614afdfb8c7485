"""Food-11 classifier for Triton's Python backend: the backend's contract, and nothing else.

Triton imports this file and makes one `TritonPythonModel` per model instance:
- `initialize(args)` once, when the instance loads (`args`: the config as JSON, the instance's
  name, kind and device);
- `execute(requests)` for every batch the scheduler forms: a list of requests, each carrying one
  or more images (its first dimension). All images of all requests go through the network in
  one pass; each request gets its own response, in order, and an image that cannot be decoded
  fails only the request it came in;
- `finalize()` once, when the instance unloads.

The work lives in the files beside this one, in the same version folder, which Triton's Python
backend puts on the import path: `image_decoding.py` (bytes to pixels), `food11_network.py` (the
network, its weights, PyTorch or ONNX Runtime) and `backend_helpers.py` (threads, device,
errors).
"""

import os

import numpy as np

import backend_helpers
import food11_network
import image_decoding

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (tests, notebooks, benchmarks)
    pb_utils = None

HERE = os.path.dirname(os.path.abspath(__file__))


def request_images(request) -> list[np.ndarray]:
    """Every image of one request, decoded to 224x224x3 uint8; BadImage names the element."""
    tensor = pb_utils.get_input_tensor_by_name(request, "INPUT_IMAGE")
    if tensor is None:
        raise image_decoding.BadImage("the request has no INPUT_IMAGE input")
    images = []
    for k, value in enumerate(tensor.as_numpy().reshape(-1)):
        try:
            images.append(image_decoding.decode_image(image_decoding.to_image_bytes(value)))
        except image_decoding.BadImage as exc:
            raise image_decoding.BadImage(f"INPUT_IMAGE element {k}: {exc}") from None
    return images


class TritonPythonModel:
    """Triton's entry point: one object per model instance."""

    def initialize(self, args):
        backend_helpers.exit_with_server()
        numpy_line = backend_helpers.check_numpy()
        params = backend_helpers.config_parameters(args)
        runtime = params.get("runtime", "torch") or "torch"
        device = backend_helpers.instance_device(args)
        self.model = food11_network.Food11Classifier(
            HERE, device=device, num_threads=backend_helpers.cpu_threads(args), runtime=runtime)
        self.labels = np.array([s.encode() for s in food11_network.LABELS], dtype=object)
        name = args["model_instance_name"]
        print(f"[{name}] Food-11 classifier on {runtime} on {device}, {self.model.threads}; "
              f"weights from {self.model.meta.get('source')}; {numpy_line}", flush=True)
        if self.model.stand_in:
            print(f"[{name}] WARNING: serving STAND-IN weights (seeded random, not trained): "
                  "labels and probabilities are meaningless.", flush=True)

    def execute(self, requests):
        responses = [None] * len(requests)
        images, owners = [], []  # owners: (request index, its first image, its image count)
        for i, request in enumerate(requests):
            try:
                decoded = request_images(request)
            except image_decoding.BadImage as exc:  # this request alone fails
                responses[i] = pb_utils.InferenceResponse(
                    error=backend_helpers.client_error(str(exc)))
                continue
            owners.append((i, len(images), len(decoded)))
            images.extend(decoded)
        if not images:
            return responses
        try:
            idx, prob = self.model.predict(np.stack(images))
        except Exception as exc:  # inference itself failed: answer every request that reached it
            for i, _, _ in owners:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"inference failed: {exc}"))
            return responses
        for i, start, count in owners:
            responses[i] = pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("FOOD_LABEL",
                                self.labels[idx[start:start + count]].reshape(count, 1)),
                pb_utils.Tensor("PROBABILITY", prob[start:start + count].reshape(count, 1)),
            ])
        return responses

    def finalize(self):
        self.model = None
