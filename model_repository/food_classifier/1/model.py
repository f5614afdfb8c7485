"""Food-11 classifier for Triton's Python backend: MobileNetV2 with an 11-class head.

Triton calls `TritonPythonModel.execute` with a list of requests; each request may carry
several images (its first dimension). All images of all requests are classified in one forward
pass, and every request gets its own answer: an image that cannot be decoded fails only the
request it came in, never the rest of the batch.

Everything above `TritonPythonModel` is plain Python (no Triton needed), so the course can run
the very same decode, preprocess and inference code in-process for comparison.
"""

import base64
import binascii
import hashlib
import io
import json
import os
import threading
import time
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (tests, notebooks, benchmarks)
    pb_utils = None

#: Food-11 class names, in the order of the network's outputs.
LABELS = (
    "Bread", "Dairy product", "Dessert", "Egg", "Fried food", "Meat",
    "Noodles/Pasta", "Rice", "Seafood", "Soup", "Vegetable/Fruit",
)
WEIGHTS_FILE = "food11.pt"
WEIGHTS_META = "food11.json"
ONNX_FILE = "food11.onnx"            # the same network exported by tritonlab.onnx_export
ONNX_META = "food11.onnx.json"

MAX_ENCODED_BYTES = 20 * 1024 * 1024  # larger uploads are refused before decoding
MAX_PIXELS = 50_000_000               # larger images (decompression bombs) are refused
RESIZE = 256                          # short side after resizing, as in training
CROP = 224                            # centre crop fed to the network
MEAN = (0.485, 0.456, 0.406)          # ImageNet normalisation used in training
STD = (0.229, 0.224, 0.225)

_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00",
          b"MM\x00*")


class BadImage(ValueError):
    """An input element that is not a usable image; the message says why."""


def _looks_like_image(data: bytes) -> bool:
    return data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def to_image_bytes(value) -> bytes:
    """The encoded image in one input element: raw image bytes, or base64 text of them."""
    if isinstance(value, str):
        value = value.encode("utf-8", "replace")
    if not isinstance(value, (bytes, bytearray, np.bytes_)):
        raise BadImage(f"expected bytes, got {type(value).__name__}")
    data = bytes(value)
    if not data:
        raise BadImage("empty input: send the bytes of an encoded image (JPEG, PNG, ...)")
    if len(data) > MAX_ENCODED_BYTES:
        raise BadImage(f"input of {len(data)} bytes is larger than the limit of "
                       f"{MAX_ENCODED_BYTES} bytes")
    if _looks_like_image(data):
        return data
    text = data.strip()
    if text[:5].lower() == b"data:" and b"," in text:  # data URI: data:image/jpeg;base64,....
        text = text.split(b",", 1)[1]
    try:
        decoded = base64.b64decode(b"".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if decoded and _looks_like_image(decoded):
        return decoded
    if decoded:
        raise BadImage("base64 text that does not decode to a JPEG, PNG, GIF, BMP, TIFF or WebP "
                       "image")
    return data  # no known signature and not base64: let the decoder have the last word


def open_image(data: bytes, min_side: int = RESIZE) -> Image.Image:
    """Decode an encoded image to 8-bit RGB, refusing what is not a sane image.

    JPEGs larger than needed are decoded at a reduced scale (1/2, 1/4, 1/8) whose short side
    is still at least `min_side`: much cheaper than decoding at full size.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width < 1 or height < 1:
                raise BadImage(f"image has no pixels ({width}x{height})")
            if width * height > MAX_PIXELS:
                raise BadImage(f"image of {width}x{height} pixels is larger than the limit of "
                               f"{MAX_PIXELS} pixels")
            scale = min_side / min(width, height)
            if scale < 1:
                img.draft("RGB", (max(1, round(width * scale)), max(1, round(height * scale))))
            return _to_rgb(img)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage(f"not an image in a known format (it starts with {data[:12]!r})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning,
            OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImage(f"cannot decode image: {exc}") from None


def decode_image(data: bytes) -> np.ndarray:
    """Decode, resize (short side 256) and centre-crop to a 224x224x3 uint8 RGB array."""
    img = open_image(data, RESIZE)
    width, height = img.size
    scale = RESIZE / min(width, height)
    # Resize(256) then CenterCrop(224) in one resampling pass: the crop box in source pixels.
    box_w, box_h = CROP / scale, CROP / scale
    left, top = (width - box_w) / 2, (height - box_h) / 2
    img = img.resize((CROP, CROP), Image.BILINEAR, box=(left, top, left + box_w, top + box_h))
    return np.asarray(img, dtype=np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any mode (grey, palette, CMYK, 16-bit, with alpha) to 8-bit RGB; alpha over white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray((arr * (255.0 / top)).clip(0, 255).astype(np.uint8))
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray((arr.clip(0, 1) * 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


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


def load_weights(folder: str, device: str = "cpu"):
    """The state_dict in `folder` and its metadata, after checking its recorded SHA-256."""
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
    state = torch.load(path, map_location=device, weights_only=True)
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
        if num_threads > 0:
            torch.set_num_threads(num_threads)
        self.device = torch.device(device)
        self.runtime = runtime
        state, self.meta = load_weights(folder, device="cpu")
        self.stand_in = bool(self.meta.get("stand_in"))
        self.session = self.net = None
        if runtime == "onnxruntime":
            self.session = load_onnx_session(folder, self.meta["sha256"], device, num_threads)
        else:
            net = build_network()
            net.load_state_dict(state)
            self.net = net.to(self.device).eval()
        # x_normalised = x_uint8 * scale - shift, per channel
        std = torch.tensor(STD).view(1, 3, 1, 1)
        self.scale = (1.0 / (255.0 * std)).to(self.device)
        self.shift = (torch.tensor(MEAN).view(1, 3, 1, 1) / std).to(self.device)

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """(N, 224, 224, 3) uint8 -> normalised (N, 3, 224, 224) float32 on the device."""
        x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float()
        return x * self.scale - self.shift

    @torch.inference_mode()
    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class index and softmax probability for each image of an (N, 224, 224, 3) uint8 array."""
        if self.session is not None:
            return self._predict_onnx(images)
        probs = torch.softmax(self.net(self.preprocess(images)).float(), dim=1)
        prob, idx = probs.max(dim=1)
        return idx.cpu().numpy(), prob.cpu().numpy().astype(np.float32)

    def _predict_onnx(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # NumPy only: PyTorch's thread pool and ONNX Runtime's would compete for the cores.
        scale = self.scale.cpu().numpy().reshape(1, 1, 1, 3)
        shift = self.shift.cpu().numpy().reshape(1, 1, 1, 3)
        x = np.ascontiguousarray((images * scale - shift).astype(np.float32).transpose(0, 3, 1, 2))
        logits = self.session.run(None, {self.session.get_inputs()[0].name: x})[0]
        logits = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        return probs.argmax(axis=1), probs.max(axis=1).astype(np.float32)

    def classify(self, encoded: list) -> list[tuple[str, float]]:
        """Label and probability for each encoded image (raw bytes or base64 text)."""
        idx, prob = self.predict(np.stack([decode_image(to_image_bytes(e)) for e in encoded]))
        return [(LABELS[i], float(p)) for i, p in zip(idx, prob)]


def exit_with_server() -> None:
    """Leave when Triton does: a stub orphaned by a killed server would otherwise linger.

    The backend stub is Triton's child; if Triton dies without stopping it (killed with
    SIGKILL), the stub is re-parented and this watcher ends it within a second.
    """
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-server", daemon=True).start()


def client_error(message: str):
    """An error for one request, as the client's fault (HTTP 400, gRPC INVALID_ARGUMENT)."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    if code is None:  # older Python backends have no error codes
        return pb_utils.TritonError(message)
    return pb_utils.TritonError(message, code)


def instance_device(args) -> str:
    """The device Triton gave this instance: 'cuda:<id>' for a KIND_GPU instance, else 'cpu'.

    Without reading `model_instance_device_id`, every GPU instance would land on GPU 0.
    """
    if args.get("model_instance_kind") == "GPU" and torch.cuda.is_available():
        return f"cuda:{int(args.get('model_instance_device_id', 0))}"
    return "cpu"


def config_parameters(args) -> dict:
    """The `parameters` of config.pbtxt as a plain {key: string} dict."""
    config = json.loads(args["model_config"])
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


class TritonPythonModel:
    """Triton's entry point: one object per model instance."""

    def initialize(self, args):
        exit_with_server()
        params = config_parameters(args)
        num_threads = int(params.get("num_threads", "0") or 0)
        runtime = params.get("runtime", "torch") or "torch"
        device = instance_device(args)
        folder = os.path.dirname(os.path.abspath(__file__))
        self.model = Food11Classifier(folder, device=device, num_threads=num_threads,
                                      runtime=runtime)
        self.labels = np.array([s.encode() for s in LABELS], dtype=object)
        where = f"{runtime} on {device}, {num_threads or torch.get_num_threads()} threads"
        print(f"[{args['model_instance_name']}] Food-11 classifier on {where}; weights from "
              f"{self.model.meta.get('source')}", flush=True)
        if self.model.stand_in:
            print(f"[{args['model_instance_name']}] WARNING: serving STAND-IN weights (seeded "
                  "random, not trained): labels and probabilities are meaningless.", flush=True)

    def execute(self, requests):
        responses = [None] * len(requests)
        images, owners = [], []  # owners: (request index, first image, image count)
        for i, request in enumerate(requests):
            try:
                tensor = pb_utils.get_input_tensor_by_name(request, "INPUT_IMAGE")
                if tensor is None:
                    raise BadImage("the request has no INPUT_IMAGE input")
                decoded = []
                for k, value in enumerate(tensor.as_numpy().reshape(-1)):
                    try:
                        decoded.append(decode_image(to_image_bytes(value)))
                    except BadImage as exc:
                        raise BadImage(f"INPUT_IMAGE element {k}: {exc}") from None
            except BadImage as exc:
                responses[i] = pb_utils.InferenceResponse(error=client_error(str(exc)))
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
            labels = self.labels[idx[start:start + count]].reshape(count, 1)
            probs = prob[start:start + count].reshape(count, 1)
            responses[i] = pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("FOOD_LABEL", labels),
                pb_utils.Tensor("PROBABILITY", probs),
            ])
        return responses

    def finalize(self):
        self.model = None
