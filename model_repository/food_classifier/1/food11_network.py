"""The Food-11 network: MobileNetV2 with an 11-class head, its weights, and two runtimes.

`Food11Classifier` runs the network in eager PyTorch ('torch') or runs its ONNX export with ONNX
Runtime ('onnxruntime'); preprocessing is the same for both. PyTorch is imported only where it
is used (the 'torch' runtime, a GPU instance): the ONNX Runtime path runs on NumPy alone, so a
reload of that variant is seconds faster and PyTorch's threads do not compete with ONNX
Runtime's. Plain Python: no Triton needed.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING

import numpy as np

import image_decoding

if TYPE_CHECKING:  # only for annotations: torch is imported where it is used
    import torch

#: Food-11 class names, in the order of the network's outputs.
LABELS = (
    "Bread", "Dairy product", "Dessert", "Egg", "Fried food", "Meat",
    "Noodles/Pasta", "Rice", "Seafood", "Soup", "Vegetable/Fruit",
)
WEIGHTS_FILE = "food11.pt"
WEIGHTS_META = "food11.json"
ONNX_FILE = "food11.onnx"            # the same network exported by tritonlab.onnx_export
ONNX_META = "food11.onnx.json"

MEAN = (0.485, 0.456, 0.406)          # ImageNet normalisation used in training
STD = (0.229, 0.224, 0.225)

#: x_normalised = x_uint8 * SCALE - SHIFT, per channel: the ImageNet normalisation in one step
SCALE = (1.0 / (255.0 * np.array(STD, dtype=np.float64))).astype(np.float32)
SHIFT = (np.array(MEAN, dtype=np.float64) / np.array(STD, dtype=np.float64)).astype(np.float32)


def normalise(images: np.ndarray) -> np.ndarray:
    """(N, 224, 224, 3) uint8 -> normalised (N, 3, 224, 224) float32, contiguous (NumPy).

    The uint8 -> float32 copy into the channel-first layout is done once, then scaled in
    place: about 20x cheaper than `(images * scale - shift).transpose(...)` with temporaries.
    """
    x = np.empty((images.shape[0], 3) + images.shape[1:3], dtype=np.float32)
    np.copyto(x, images.transpose(0, 3, 1, 2), casting="unsafe")
    x *= SCALE.reshape(1, 3, 1, 1)
    x -= SHIFT.reshape(1, 3, 1, 1)
    return x


def build_network(num_classes: int = len(LABELS)) -> torch.nn.Module:
    """MobileNetV2 whose classifier is Dropout + Linear(1280, num_classes), untrained."""
    from torchvision.models import mobilenet_v2

    return mobilenet_v2(weights=None, num_classes=num_classes)


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_meta(folder: str) -> dict:
    """The metadata of the weights in `folder`, after checking the file's recorded SHA-256."""
    path = os.path.join(folder, WEIGHTS_FILE)
    meta_path = os.path.join(folder, WEIGHTS_META)
    if not (os.path.exists(path) and os.path.exists(meta_path)):
        raise FileNotFoundError(
            f"no Food-11 weights in {folder} ({WEIGHTS_FILE} and {WEIGHTS_META}); "
            "run `make weights` (or tritonlab.weights.ensure_weights()) first")
    with open(meta_path) as f:
        meta = json.load(f)
    actual = sha256_of(path)
    if actual != meta.get("sha256"):
        raise ValueError(f"{path} has SHA-256 {actual}, but {WEIGHTS_META} records "
                         f"{meta.get('sha256')}; rebuild it with `make weights`")
    return meta


def load_weights(folder: str, device: str = "cpu"):
    """The state_dict in `folder` and its metadata, after checking its recorded SHA-256."""
    import torch

    meta = weights_meta(folder)
    state = torch.load(os.path.join(folder, WEIGHTS_FILE), map_location=device,
                       weights_only=True)
    return state, meta


def load_onnx_session(folder: str, weights_sha256: str, device: str = "cpu",
                      num_threads: int = 0):
    """An ONNX Runtime session for the exported network, refusing an export of other weights."""
    import onnxruntime as ort

    path = os.path.join(folder, ONNX_FILE)
    meta_path = os.path.join(folder, ONNX_META)
    if not (os.path.exists(path) and os.path.exists(meta_path)):
        raise FileNotFoundError(f"no {ONNX_FILE} in {folder}: export it first "
                                "(tritonlab.onnx_export.export_onnx(), notebook 05)")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("weights_sha256") != weights_sha256 or meta.get("sha256") != sha256_of(path):
        raise ValueError(f"{ONNX_FILE} was not exported from the current weights (or was "
                         "changed since): export it again")
    options = ort.SessionOptions()
    if num_threads > 0:
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(device.split(":")[1])}))
    return ort.InferenceSession(path, sess_options=options, providers=providers)


class Food11Classifier:
    """The network with its weights, ready to classify batches of preprocessed images.

    `runtime` 'torch' runs the network in eager PyTorch; 'onnxruntime' runs the exported
    `food11.onnx` (same weights) with ONNX Runtime. Preprocessing is the same for both.
    """

    def __init__(self, folder: str, device: str = "cpu", num_threads: int = 0,
                 runtime: str = "torch"):
        if runtime not in ("torch", "onnxruntime"):
            raise ValueError(f"runtime must be 'torch' or 'onnxruntime', not {runtime!r}")
        self.runtime = runtime
        self.device = device
        self.session = self.net = None
        if runtime == "onnxruntime":
            # NumPy and ONNX Runtime only: no torch import, no second thread pool.
            self.meta = weights_meta(folder)
            self.session = load_onnx_session(folder, self.meta["sha256"], device, num_threads)
            self.input_name = self.session.get_inputs()[0].name
            self.threads = (f"{num_threads} threads" if num_threads > 0 else
                            "ONNX Runtime's default threads (one per physical core)")
        else:
            import torch

            if num_threads > 0:
                torch.set_num_threads(num_threads)
            self.threads = f"{torch.get_num_threads()} threads"
            state, self.meta = load_weights(folder, device="cpu")
            net = build_network()
            net.load_state_dict(state)
            self.net = net.to(device).eval()
            # x_normalised = x_uint8 * scale - shift, per channel, on the instance's device
            self.scale_t = torch.from_numpy(SCALE).view(1, 3, 1, 1).to(device)
            self.shift_t = torch.from_numpy(SHIFT).view(1, 3, 1, 1).to(device)
        self.stand_in = bool(self.meta.get("stand_in"))

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """(N, 224, 224, 3) uint8 -> normalised (N, 3, 224, 224) float32 torch tensor on the
        instance's device (the 'torch' runtime)."""
        import torch

        x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float()
        return x * self.scale_t - self.shift_t

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class index and softmax probability for each image of an (N, 224, 224, 3) uint8 array."""
        if self.session is not None:
            logits = self.session.run(None, {self.input_name: normalise(images)})[0]
            logits = logits - logits.max(axis=1, keepdims=True)
            probs = np.exp(logits)
            probs /= probs.sum(axis=1, keepdims=True)
            return probs.argmax(axis=1), probs.max(axis=1).astype(np.float32)
        import torch

        with torch.inference_mode():
            probs = torch.softmax(self.net(self.preprocess(images)).float(), dim=1)
            prob, idx = probs.max(dim=1)
        return idx.cpu().numpy(), prob.cpu().numpy().astype(np.float32)

    def classify(self, encoded: list) -> list[tuple[str, float]]:
        """Label and probability for each encoded image (raw bytes or base64 text)."""
        idx, prob = self.predict(np.stack([image_decoding.decode_image(
            image_decoding.to_image_bytes(e)) for e in encoded]))
        return [(LABELS[i], float(p)) for i, p in zip(idx, prob)]
