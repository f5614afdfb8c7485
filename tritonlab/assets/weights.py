"""Food-11 weights: fetch the course's trained model once, or build a seeded stand-in offline.

Whatever the source, the result is stored the same way beside the served model: a plain
state_dict (`food11.pt`, loaded with `weights_only=True`) and `food11.json` recording its
SHA-256, where it came from, and whether it is a stand-in.

A download of the course file is checked against the git blob id under which the public course
repository publishes it (PUBLISHED_BLOBS), then its SHA-256 is recorded for later uses.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import shutil
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import torch

from .. import settings
from ..common import atomic_write, log
from .repository import model_dir, network

#: The trained course model: a whole pickled torchvision MobileNetV2 with an 11-class head.
DEFAULT_URL = ("https://raw.githubusercontent.com/teaching-on-testbeds/serve-system-chi/main/"
               "models_staging/food_classifier/1/food11.pth")
#: The same file at the other path the course repository keeps a copy.
FASTAPI_URL = ("https://raw.githubusercontent.com/teaching-on-testbeds/serve-system-chi/main/"
               "fastapi_pt/food11.pth")
#: The git blob id each course URL's file must have. The public repository's tree (commit 012a8b9,
#: 2025-03-18, no Git LFS) lists food11.pth at both paths as this blob; a blob id is the SHA-1 of
#: b"blob <size>\0" followed by the file's bytes, so a download is checked without git.
PUBLISHED_BLOBS = {
    DEFAULT_URL: "b550214474f469ca65c2eb6c30f383ef4e7e8c7a",
    FASTAPI_URL: "b550214474f469ca65c2eb6c30f383ef4e7e8c7a",
}
STAND_IN = "stand-in"
STAND_IN_SEED = 11

#: Classes a pickled whole model may name; anything else in a checkpoint is refused unread.
ALLOWED_MODULES = ("torch.nn.modules.", "torchvision.models.mobilenetv2.", "torchvision.ops.misc.")

BANNER = ("*" * 78 + "\n"
          "STAND-IN WEIGHTS: the real Food-11 model could not be fetched, so the classifier\n"
          "serves a MobileNetV2 with seeded RANDOM weights. Its labels and probabilities are\n"
          "MEANINGLESS; everything else (serving, batching, speed) behaves as with the real one.\n"
          + "*" * 78)


class WeightsError(RuntimeError):
    """Weights could not be fetched, read or checked; the message says what to do."""


def weights_source() -> str:
    """Where weights come from: FOOD11_WEIGHTS (URL, file or 'stand-in') or the course URL."""
    return os.environ.get("FOOD11_WEIGHTS", DEFAULT_URL)


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, computed as the served model checks it."""
    return network().sha256_of(str(path))


def git_blob_id(path: Path) -> str:
    """The git blob id of a file (40 hex digits): the SHA-1 of b"blob <size in bytes>\\0"
    followed by its bytes, as `git hash-object` computes it, read in 1 MiB chunks."""
    path = Path(path)
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, cache_dir: Path, timeout: float = 30.0) -> Path:
    """Download `url` once into `cache_dir` (with a progress bar); a cached copy is reused."""
    from tqdm.auto import tqdm

    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / Path(url.split("?")[0]).name
    if target.exists():
        return target
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        total = int(resp.headers.get("Content-Length") or 0) or None

        def copy(out) -> None:
            with tqdm(total=total, unit="B", unit_scale=True,
                      desc=f"download {target.name}") as bar:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    out.write(chunk)
                    bar.update(len(chunk))

        return atomic_write(target, copy)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A MobileNetV2 state_dict from a plain state_dict file or a whole pickled model.

    Nothing is unpickled with `weights_only=False`: a whole model is read with the restricted
    unpickler, allowing only torch.nn and torchvision MobileNetV2 classes that the file names.
    """
    import pickle

    import torch.serialization as ser

    try:
        names = ser.get_unsafe_globals_in_checkpoint(str(path))
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise WeightsError(f"cannot read {path}: not a PyTorch checkpoint, or a corrupt one "
                           f"({str(exc).splitlines()[0]}). Delete it and fetch it again.") from None
    refused = [n for n in names if not n.startswith(ALLOWED_MODULES)]
    if refused:
        raise WeightsError(f"{path} names classes outside torch.nn and torchvision's MobileNetV2 "
                           f"({', '.join(refused)}); refusing to unpickle it.")
    allowed = []
    for name in names:
        module, _, attr = name.rpartition(".")
        try:
            allowed.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            raise WeightsError(f"{path} was saved with a class this torchvision lacks ({name}); "
                               "save it as a state_dict with the torchvision it was made with."
                               ) from None
    with ser.safe_globals(allowed):
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    elif isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} holds neither a MobileNetV2 nor a state_dict of one.")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    net = network().build_network()
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not fit MobileNetV2 with an 11-class head: "
                           f"{str(exc).splitlines()[0]}") from None
    return net.state_dict()


def build_stand_in(seed: int = STAND_IN_SEED) -> dict[str, torch.Tensor]:
    """A MobileNetV2 with the 11-class head and seeded random weights (same result every time).

    Freshly initialised, every image would get the same 1/11 probabilities; so the BatchNorm
    statistics are set from seeded noise images and the head is centred on them, which makes
    the (meaningless) answers differ from image to image, as a trained model's do.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = network().build_network()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batches
            module.reset_running_stats()
    with torch.no_grad():
        net.train()
        for _ in range(3):
            net(torch.randn(8, 3, 224, 224, generator=generator))
        net.eval()
        head = net.classifier[1]
        head.weight.normal_(0.0, 0.05, generator=generator)
        features = net.features(torch.randn(16, 3, 224, 224, generator=generator)).mean((2, 3))
        head.bias.copy_(-(features.mean(0) @ head.weight.T))
    return net.state_dict()


def save_weights(state: dict[str, torch.Tensor], folder: Path, source: str, stand_in: bool,
                 source_sha256: str | None = None, source_git_blob: str | None = None) -> dict:
    """Write `food11.pt` and `food11.json` into `folder` atomically; returns the metadata.

    `source_git_blob` is the published git blob id the source file was checked against, if any.
    """
    mod = network()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    meta = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "source": source,
        "source_sha256": source_sha256,
        "source_git_blob": source_git_blob,
        "stand_in": stand_in,
        "labels": list(mod.LABELS),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    atomic_write(folder / mod.WEIGHTS_FILE, data)
    atomic_write(folder / mod.WEIGHTS_META, json.dumps(meta, indent=2) + "\n")
    return meta


def current(folder: Path | None = None) -> dict | None:
    """Metadata of the weights in `folder` if they are present and match their SHA-256."""
    folder = folder or model_dir("food_classifier")
    try:
        _, meta = network().load_weights(str(folder))
        return meta
    except (OSError, ValueError, RuntimeError):
        return None


def ensure_weights(folder: Path | None = None, source: str | None = None, force: bool = False,
                   expected_sha256: str | None = None) -> dict:
    """Make sure `folder` holds checked Food-11 weights; returns their metadata.

    Weights already there (and matching their SHA-256) are kept unless `force`. Otherwise
    `source` is read: a URL, a local file, or 'stand-in' (default: FOOD11_WEIGHTS or the course
    URL). When a URL or file cannot be read, a seeded stand-in is built instead, and said loudly.

    A file read from a URL must have the git blob id the course repository publishes for that
    URL (PUBLISHED_BLOBS), then match the SHA-256 its first download recorded; `expected_sha256`
    (or FOOD11_SHA256), when given, replaces both checks. Raises WeightsError on any mismatch,
    naming both ids; nothing is served from such a file.
    """
    folder = Path(folder or model_dir("food_classifier"))
    source = source or weights_source()
    expected_sha256 = expected_sha256 or os.environ.get("FOOD11_SHA256") or None
    meta = None if force else current(folder)
    if meta is None:
        meta = _build(folder, source, expected_sha256)
    log.info(describe(meta))
    if meta.get("stand_in"):
        log.info("To serve the trained model: `make weights` on a machine with network access, "
                 "or FOOD11_WEIGHTS=/path/to/food11.pth make weights.")
    return meta


def pin_file(downloaded: Path) -> Path:
    """Where the SHA-256 of a downloaded weights file is recorded: beside it, `<name>.sha256`."""
    return downloaded.with_name(downloaded.name + ".sha256")


def _check_pin(path: Path, url: str, digest: str) -> None:
    """The first download of `url` records its SHA-256; every later use must match it.

    A file that changed since (tampered with, truncated, or replaced upstream) stops here with a
    clear message instead of being served.
    """
    pin = pin_file(path)
    if pin.exists():
        recorded = pin.read_text().split()[0]
        if recorded != digest:
            raise WeightsError(
                f"{path} (from {url}) has SHA-256 {digest}, but its first download recorded "
                f"{recorded} in {pin}. The file changed: delete both and download again only if "
                "you trust the new file (or set FOOD11_SHA256 to the digest you expect).")
        return
    atomic_write(pin, f"{digest}  {url}\n")
    log.info(f"Recorded SHA-256 {digest[:16]}... of {url} in {pin}: later uses must match it.")


def _check_published_blob(path: Path, url: str, digest: str) -> str | None:
    """The file's git blob id when `url` is one whose blob the course repository publishes.

    Raises WeightsError naming both ids on a mismatch, after deleting the downloaded file (and
    a SHA-256 record of that very file), so nothing is served or trusted from it later.
    """
    expected = PUBLISHED_BLOBS.get(url)
    if expected is None:
        return None
    actual = git_blob_id(path)
    if actual == expected:
        log.info(f"{path.name} is the course repository's published file (git blob {actual}).")
        return actual
    pin = pin_file(path)
    path.unlink(missing_ok=True)
    if pin.exists() and pin.read_text().split()[:1] == [digest]:
        pin.unlink()
    raise WeightsError(
        f"{url} gave a file with git blob id {actual}, but the course repository publishes "
        f"food11.pth as blob {expected}. The download is deleted and nothing is served from it. "
        "Run `make weights` again; if the repository has published a new file on purpose, "
        f"accept it with FOOD11_SHA256={digest} (the SHA-256 of the file just refused).")


def _build(folder: Path, source: str, expected_sha256: str | None) -> dict:
    if source == STAND_IN:
        return save_weights(build_stand_in(), folder, STAND_IN, stand_in=True)
    try:
        path = Path(source).expanduser()
        if not path.exists():
            if "://" not in source:
                raise WeightsError(f"no weights file at {path}")
            path = download(source, settings.DATA / "cache")
    except (OSError, WeightsError) as exc:
        log.warning(f"Could not fetch the Food-11 weights from {source}: {exc}")
        return save_weights(build_stand_in(), folder, STAND_IN, stand_in=True)
    digest = sha256_file(path)
    if expected_sha256 and digest != expected_sha256:
        raise WeightsError(f"{path} has SHA-256 {digest}, expected {expected_sha256}. "
                           "Delete it and fetch again, or check FOOD11_SHA256.")
    blob = None
    if "://" in source and not expected_sha256:  # a digest given explicitly has the last word
        blob = _check_published_blob(path, source, digest)
        _check_pin(path, source, digest)
    return save_weights(read_checkpoint(path), folder, source, stand_in=False,
                        source_sha256=digest, source_git_blob=blob)


def describe(meta: dict) -> str:
    """One paragraph saying which weights are served; a loud banner for a stand-in."""
    if meta.get("stand_in"):
        return BANNER
    published = (f", the course repository's published file (git blob "
                 f"{meta['source_git_blob'][:12]}...)" if meta.get("source_git_blob") else "")
    return (f"Food-11 weights from {meta['source']}{published} (state_dict SHA-256 "
            f"{meta['sha256'][:16]}..., converted {meta['created']}).")


def copy_weights(src_folder: Path, dst_folder: Path) -> None:
    """Copy the weight files (used to build test repositories)."""
    mod = network()
    dst_folder.mkdir(parents=True, exist_ok=True)
    for name in (mod.WEIGHTS_FILE, mod.WEIGHTS_META):
        shutil.copy2(src_folder / name, dst_folder / name)
