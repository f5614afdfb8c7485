"""Food-11 classifier for Triton's Python backend: MobileNetV2 with an 11-class head.

Triton calls `TritonPythonModel.execute` with a list of requests; each request may carry
several images (its first dimension). All images of all requests are classified in one forward
pass, and every request gets its own answer: an image that cannot be decoded fails only the
request it came in, never the rest of the batch.

Everything above `TritonPythonModel` is plain Python (no Triton needed), so the course can run
the very same decode, preprocess and inference code in-process for comparison.

PyTorch is imported only where it is used (the 'torch' runtime, a GPU instance): the
'onnxruntime' runtime runs on NumPy and ONNX Runtime alone, which makes a reload of that variant
seconds faster (importing torch and torchvision takes several seconds) and leaves the cores to
ONNX Runtime's threads.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
import warnings
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

try:  # HEIC/HEIF, the default of many phones, through the pillow-heif plugin
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_DECODER = True
except ImportError:  # refused with a message that says how to convert
    HEIF_DECODER = False

if TYPE_CHECKING:  # only for annotations: torch is imported where it is used
    import torch

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


#: ISO base media file brands (bytes 8-12 after "ftyp") of still-image formats.
HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")
AVIF_BRANDS = (b"avif", b"avis")


def _looks_like_image(data: bytes) -> bool:
    return (data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")
            or (data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS + AVIF_BRANDS))


def format_name(data: bytes) -> str | None:
    """The name of a format the decoders may lack, from its first bytes (None: not one of them)."""
    if data[4:8] == b"ftyp" and data[8:12] in AVIF_BRANDS:
        return "AVIF"
    if data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS:
        return "HEIC/HEIF"
    if data.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")):
        return "JPEG XL"
    return None


def _unsupported(name: str) -> BadImage:
    plugin = " (install the pillow-heif package on the server)" if name == "HEIC/HEIF" else ""
    return BadImage(f"{name} images cannot be decoded here{plugin}: convert the photo to JPEG "
                    "or PNG first (on a phone: share or export it as JPEG, 'Most Compatible'; "
                    "on a computer, e.g. `magick photo.heic photo.jpg`)")


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
        raise BadImage("base64 text that does not decode to a JPEG, PNG, HEIC, AVIF, WebP, GIF, "
                       "BMP or TIFF image")
    return data  # no known signature and not base64: let the decoder have the last word


def open_image(data: bytes, min_side: int = RESIZE) -> Image.Image:
    """Decode an encoded image to 8-bit sRGB, upright as the photo is shown, refusing what is
    not a sane image.

    As a photo viewer shows it: the EXIF orientation (phones store portrait photos sideways
    with a tag that says so) is applied, and an embedded colour profile (Display P3, Adobe RGB,
    CMYK, ...) is converted to sRGB, the colour space the networks were trained on. JPEGs larger
    than needed are decoded at a reduced scale (1/2, 1/4, 1/8) whose short side is still at
    least `min_side`: much cheaper than decoding at full size.
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
            profile = img.info.get("icc_profile")
            ImageOps.exif_transpose(img, in_place=True)
            return _to_rgb(_to_srgb(img, profile))
    except BadImage:
        raise
    except UnidentifiedImageError:
        name = format_name(data)
        if name:
            raise _unsupported(name) from None
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


_SRGB = None


def _to_srgb(img: Image.Image, profile: bytes | None) -> Image.Image:
    """`img` converted from its embedded ICC profile to sRGB (unchanged without one, when the
    profile is sRGB already, or when it cannot be read: viewers then show the pixels as sRGB)."""
    global _SRGB
    if not profile or img.mode not in ("RGB", "RGBA", "CMYK", "L"):
        return img
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        if "srgb" in ImageCms.getProfileDescription(source).lower().replace(" ", ""):
            return img
        if _SRGB is None:
            _SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
        out = ImageCms.profileToProfile(img, source, _SRGB,
                                        outputMode="RGBA" if img.mode == "RGBA" else "RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return img
    out.info.pop("icc_profile", None)
    return out


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
        idx, prob = self.predict(np.stack([decode_image(to_image_bytes(e)) for e in encoded]))
        return [(LABELS[i], float(p)) for i, p in zip(idx, prob)]


#: Watches this model process and its server from outside (plain sh, one process per instance):
#: when the server is gone (no such process, or a zombie), the model process gets 2 s to leave
#: on its own and is then killed. A thread inside the model process cannot do this reliably:
#: killed mid-request, the backend stub can block with Python's lock held, so no Python code
#: in it runs again (seen with a tritonserver SIGKILLed during a perf_analyzer run).
_WATCHDOG = """
while [ -e "/proc/$1" ]; do
  state=""
  { read -r _ _ state _ < "/proc/$2/stat"; } 2>/dev/null
  case "$state" in
    ""|Z|X) sleep 2; kill -9 "$1" 2>/dev/null; exit 0 ;;
  esac
  sleep 1
done
"""


def exit_with_server() -> None:
    """Leave when Triton does: a model process orphaned by a killed server would otherwise linger.

    The backend stub is Triton's child. The watchdog is started detached (its starter exits at
    once, so no zombie is left) and ends by itself when this process ends.
    """
    import subprocess

    launcher = f'({_WATCHDOG}) </dev/null >/dev/null 2>&1 &'
    subprocess.run(["/bin/sh", "-c", launcher, "tritonlab-watchdog", str(os.getpid()),
                    str(os.getppid())], check=True, timeout=10)


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
    if args.get("model_instance_kind") != "GPU":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(args.get('model_instance_device_id', 0))}"
    return "cpu"


def config_parameters(args) -> dict:
    """The `parameters` of config.pbtxt as a plain {key: string} dict."""
    config = json.loads(args["model_config"])
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota (a
    container limited with `--cpus`), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, int(quota) // int(period))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def instance_count(config: dict) -> int:
    """How many instances of this model Triton runs: every group's count (per GPU it names)."""
    total = 0
    for group in config.get("instance_group", []):
        gpus = len(group.get("gpus", [])) if group.get("kind") == "KIND_GPU" else 0
        total += int(group.get("count", 1)) * max(1, gpus)
    return max(1, total)


def cpu_threads(args, cores: int | None = None) -> int:
    """Threads for this instance's runtime (PyTorch or ONNX Runtime), from config.pbtxt.

    `num_threads` > 0 is taken as it is. Otherwise the instance gets its share of the cores:
    `cpu_share` (default 1) is the fraction of the machine's cores that all instances of this
    model use together, split evenly between them (at least one thread each). Models that run
    at the same time (the ensemble's steps) get shares that add up to at most 1, so their
    thread pools never claim more cores than there are.
    """
    config = json.loads(args["model_config"])
    params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    explicit = int(params.get("num_threads", "0") or 0)
    if explicit > 0:
        return explicit
    share = float(params.get("cpu_share", "1") or 1)
    if not 0 < share <= 1:
        raise ValueError(f"cpu_share must be in (0, 1], not {share}")
    return max(1, int((cores or usable_cores()) * share) // instance_count(config))


class TritonPythonModel:
    """Triton's entry point: one object per model instance."""

    def initialize(self, args):
        exit_with_server()
        params = config_parameters(args)
        num_threads = cpu_threads(args)
        runtime = params.get("runtime", "torch") or "torch"
        device = instance_device(args)
        folder = os.path.dirname(os.path.abspath(__file__))
        self.model = Food11Classifier(folder, device=device, num_threads=num_threads,
                                      runtime=runtime)
        self.labels = np.array([s.encode() for s in LABELS], dtype=object)
        where = f"{runtime} on {device}, {self.model.threads}"
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
