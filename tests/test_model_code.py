"""The served model's own decode and preprocessing code, run in-process (no Triton needed)."""

from __future__ import annotations

import base64
import struct

import numpy as np
import pytest
from PIL import Image, ImageFilter

from .photos import encode


@pytest.fixture(scope="module")
def photo(images) -> Image.Image:
    return Image.open(images[0]).convert("RGB")


def test_raw_and_base64_forms_decode_the_same(decoding, images):
    raw = images[0].read_bytes()
    b64 = base64.b64encode(raw)
    forms = [raw, b64, b64.decode(), b"data:image/jpeg;base64," + b64,
             b64[:40] + b"\n" + b64[40:]]
    arrays = [decoding.decode_image(decoding.to_image_bytes(f)) for f in forms]
    for arr in arrays:
        assert arr.shape == (224, 224, 3) and arr.dtype == np.uint8
        assert np.array_equal(arr, arrays[0])


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("RGBA", "PNG"), ("CMYK", "JPEG"),
                                      ("P", "GIF"), ("RGB", "BMP"), ("RGB", "WEBP"),
                                      ("RGB", "TIFF"), ("I;16", "PNG")])
def test_unusual_but_valid_images_decode(decoding, photo, mode, fmt):
    if mode == "I;16":
        grey = np.asarray(photo.convert("L"), dtype=np.uint16) * 257
        img = Image.fromarray(grey)
        assert img.mode == "I;16"
    else:
        img = photo.convert(mode)
    arr = decoding.decode_image(decoding.to_image_bytes(encode(img, fmt)))
    assert arr.shape == (224, 224, 3)
    assert 20 < arr.mean() < 235, "decoded to a blank image"


def test_alpha_is_composited_over_white(decoding):
    clear = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    arr = decoding.decode_image(encode(clear, "PNG"))
    assert arr.min() == 255


def test_tiny_image_is_upscaled(decoding):
    arr = decoding.decode_image(encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"))
    assert arr.shape == (224, 224, 3) and tuple(arr[100, 100]) == (10, 200, 30)


def test_resize_matches_resize_then_centre_crop(decoding):
    """One-pass box resampling equals torchvision's Resize(256) + CenterCrop(224) closely."""
    from torchvision import transforms

    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    img = noise.filter(ImageFilter.GaussianBlur(3))
    ours = decoding.decode_image(encode(img, "PNG")).astype(float)
    ref = np.asarray(transforms.CenterCrop(224)(transforms.Resize(256)(img))).astype(float)
    assert np.abs(ours - ref).mean() < 3.0


@pytest.mark.parametrize("data,reason", [
    (b"", "empty"),
    (b"plain text, not an image", "not an image"),
    (b"\x00\x01\x02" * 50, "not an image"),
    (base64.b64encode(b"base64 of text"), "base64 text that does not decode"),
])
def test_not_images_are_refused_with_a_reason(decoding, data, reason):
    with pytest.raises(decoding.BadImage, match=reason):
        decoding.decode_image(decoding.to_image_bytes(data))


def test_truncated_jpeg_is_refused(decoding, images):
    data = images[0].read_bytes()
    with pytest.raises(decoding.BadImage, match="cannot decode"):
        decoding.decode_image(decoding.to_image_bytes(data[: len(data) // 3]))


def test_decompression_bomb_is_refused_before_decoding(decoding):
    """A PNG whose header claims 100000 x 100000 pixels."""
    import zlib

    small = encode(Image.new("L", (8, 8)), "PNG")
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    bomb = small[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) \
        + small[33:]
    with pytest.raises(decoding.BadImage, match="pixels"):
        decoding.decode_image(decoding.to_image_bytes(bomb))


def test_oversized_upload_is_refused(decoding):
    with pytest.raises(decoding.BadImage, match="larger than the limit"):
        too_big = b"\xff\xd8\xff" + b"\x00" * decoding.MAX_ENCODED_BYTES
        decoding.to_image_bytes(too_big)


def test_softmax_probabilities(reference, images, decoding):
    batch = np.stack([decoding.decode_image(p.read_bytes()) for p in images])
    idx, prob = reference.predict(batch)
    assert idx.shape == prob.shape == (len(images),)
    assert np.all((prob > 1 / 11 - 1e-6) & (prob <= 1))
    # batching must not change an image's answer
    one_idx, one_prob = reference.predict(batch[2:3])
    assert one_idx[0] == idx[2] and one_prob[0] == pytest.approx(prob[2], abs=1e-5)


def test_normalise_matches_the_torch_preprocessing(network):
    """The NumPy path (ONNX Runtime) and the PyTorch path feed the network the same numbers."""
    import torch

    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(3, 224, 224, 3), dtype=np.uint8)
    x = network.normalise(images)
    assert x.shape == (3, 3, 224, 224) and x.dtype == np.float32 and x.flags.c_contiguous
    mean = torch.tensor(network.MEAN).view(1, 3, 1, 1)
    std = torch.tensor(network.STD).view(1, 3, 1, 1)
    expected = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    np.testing.assert_allclose(x, expected.numpy(), atol=2e-6)



def test_food11_images_are_found_in_any_layout(tmp_path, images):
    from tritonlab.assets import samples

    assert samples.food11_images(folder=tmp_path / "absent") == []
    for i in range(10):
        folder = tmp_path / "evaluation" / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.jpg").write_bytes(images[0].read_bytes())
    (tmp_path / "notes.txt").write_text("not an image")
    assert len(samples.food11_images(folder=tmp_path)) == 10
    picked = samples.food11_images(limit=3, folder=tmp_path)
    assert len(picked) == 3 and len({p.parent.name for p in picked}) == 3


def test_numpy_2_is_refused_at_load_with_the_reason(helpers, monkeypatch):
    """Triton 2.51's backend stub misreads BYTES tensors under NumPy 2 and dies at the first
    image (seen on a GPU machine whose Python had NumPy 2.5): the model refuses to load instead,
    naming the NumPy it got and where from."""
    assert helpers.check_numpy().startswith(f"NumPy {np.__version__} (")
    monkeypatch.setattr(np, "__version__", "2.5.2")
    with pytest.raises(RuntimeError, match=r"NumPy 2\.5\.2 .*python_backend#384.*numpy<2"):
        helpers.check_numpy()


def test_threads_that_import_the_model_code_at_once_all_get_it_whole():
    """The API decodes uploads in a thread pool, and the first uploads of a fresh process import
    the models' code together: each thread gets the whole module, none a half-loaded one. In a
    fresh interpreter, since this one has the code imported already."""
    import subprocess
    import sys

    script = """
import threading
from tritonlab.assets.repository import decoding
start, got, errors = threading.Barrier(8), [], []
def first_upload():
    start.wait()
    try:
        got.append(decoding().open_image)
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=first_upload) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(len(got), errors)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "8 []"
