"""Bad and unusual inputs, table-driven: the classifier, the ensemble and the API each answer
every one correctly (a valid but unusual image) or with a clear error for that request alone,
and stay ready. The table of what each got is printed."""

from __future__ import annotations

import base64
import io
import os
import struct
import zlib

import numpy as np
import pytest
import requests
from PIL import Image

from tritonlab import api

from . import photos
from .conftest import free_ports

pytestmark = pytest.mark.server


def _bomb() -> bytes:
    small = photos.encode(Image.new("L", (8, 8)), "PNG")
    chunk = b"IHDR" + struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    return small[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) \
        + small[33:]


def _cases(photo: Image.Image, jpeg: bytes) -> list[tuple[str, bytes, str]]:
    grey16 = Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257)
    frames = [photo.convert("P"), photo.rotate(90).convert("P")]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    return [
        ("empty bytes", b"", "error"),
        ("random bytes", os.urandom(2048), "error"),
        ("plain text", b"a plate of pasta, honestly", "error"),
        ("truncated JPEG", jpeg[: len(jpeg) // 2], "error"),
        ("invalid base64", b"bm90IGFuIGltYWdl!!!===", "error"),
        ("base64 of text", base64.b64encode(b"not an image either"), "error"),
        ("decompression bomb (100000x100000 header)", _bomb(), "error"),
        ("PNG with alpha", photos.encode(rgba, "PNG"), "ok"),
        ("grayscale JPEG", photos.encode(photo.convert("L"), "JPEG"), "ok"),
        ("CMYK JPEG", photos.encode(photo.convert("CMYK"), "JPEG"), "ok"),
        ("16-bit PNG", photos.encode(grey16, "PNG"), "ok"),
        ("animated GIF", gif.getvalue(), "ok"),
        ("1x1 image", photos.encode(Image.new("RGB", (1, 1), (200, 100, 50)), "PNG"), "ok"),
        ("base64 text of a JPEG", base64.b64encode(jpeg), "ok"),
        ("JPEG stored sideways, EXIF orientation 6", photos.sideways_jpeg(photo, 6), "ok"),
        ("Display P3 JPEG", photos.tagged(photo, photos.DISPLAY_P3, "JPEG"), "ok"),
        ("HEIC (as iPhones save)", photos.encode(photo, "HEIF", quality=90), "ok"),
        ("AVIF", photos.encode(photo, "AVIF", quality=90), "ok"),
        ("JPEG XL (no decoder here)", b"\xff\x0a" + os.urandom(512), "error: JPEG XL"),
    ]


@pytest.fixture(scope="module")
def cases(images):
    jpeg = images[0].read_bytes()
    return _cases(Image.open(images[0]).convert("RGB"), jpeg)


def _triton(url: str, model: str, payload: bytes) -> tuple[int, dict]:
    """A plain KServe v2 request with the bytes as a binary BYTES tensor."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url, network_timeout=120)
    try:
        inp = httpclient.InferInput("INPUT_IMAGE", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[payload]], dtype=object))
        result = client.infer(model, [inp])
        return 200, {"label": result.as_numpy("FOOD_LABEL")[0, 0].decode()}
    except InferenceServerException as exc:
        return int(exc.status() or 0), {"error": exc.message()}
    finally:
        client.close()


def _report(title: str, rows: list[tuple[str, str, int, str]]) -> None:
    print(f"\n{title}\n{'input':44} {'expected':9} {'status':7} answer")
    for name, expect, status, answer in rows:
        print(f"{name:44} {expect:9} {status:<7} {answer[:70]}")


@pytest.mark.parametrize("model", ["food_classifier", "food_captioning"])
def test_triton_models_answer_each_input(triton, cases, model, capsys):
    rows = []
    for name, payload, expect in cases:
        status, body = _triton(triton.http_url, model, payload)
        rows.append((name, expect, status, body.get("label") or body.get("error", "")))
        if expect == "ok":
            assert status == 200, f"{name}: {body}"
        else:
            assert status == 400, f"{name}: {status} {body}"
            assert body["error"], name
            named = expect.partition(": ")[2]  # a format without a decoder here
            if named:
                assert named in body["error"] and "convert" in body["error"], body["error"]
        assert triton.is_ready(), f"not ready after {name}"
    with capsys.disabled():
        _report(f"{model} (HTTP)", rows)


def test_requests_triton_itself_refuses(triton, images, capsys):
    base = f"http://{triton.http_url}/v2/models"
    good = base64.b64encode(images[0].read_bytes()).decode()
    calls = {
        "wrong data type (FP32)": ("food_classifier", {"inputs": [
            {"name": "INPUT_IMAGE", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}),
        "wrong shape ([1, 2])": ("food_classifier", {"inputs": [
            {"name": "INPUT_IMAGE", "shape": [1, 2], "datatype": "BYTES", "data": [good, good]}]}),
        "missing input": ("food_classifier", {"inputs": []}),
        "unknown input name": ("food_classifier", {"inputs": [
            {"name": "IMAGE", "shape": [1, 1], "datatype": "BYTES", "data": [good]}]}),
        "unknown model name": ("no_such_model", {"inputs": [
            {"name": "INPUT_IMAGE", "shape": [1, 1], "datatype": "BYTES", "data": [good]}]}),
    }
    rows = []
    for name, (model, body) in calls.items():
        resp = requests.post(f"{base}/{model}/infer", json=body, timeout=60)
        rows.append((name, "error", resp.status_code, resp.json().get("error", "")))
        assert 400 <= resp.status_code < 500, f"{name}: {resp.status_code} {resp.text}"
        assert resp.json().get("error"), name
    assert triton.is_ready()
    with capsys.disabled():
        _report("Triton's own checks (HTTP JSON)", rows)


def test_api_answers_each_upload_with_json(triton, cases, capsys):
    running = api.serve_in_background(port=free_ports(1)[0], triton=triton.http_url)
    rows = []
    try:
        for name, payload, expect in cases:
            resp = requests.post(running.url + "/predict", files={"file": ("upload", payload)},
                                 timeout=120)
            body = resp.json()
            rows.append((name, expect, resp.status_code,
                         body.get("caption") or str(body.get("detail", ""))))
            if expect == "ok":
                assert resp.status_code == 200, f"{name}: {body}"
            else:
                assert 400 <= resp.status_code < 500, f"{name}: {resp.status_code} {body}"
                assert isinstance(body["detail"], str) and "Traceback" not in body["detail"]
                named = expect.partition(": ")[2]
                if named:  # a format with no decoder here: 415 naming it, saying what to do
                    assert resp.status_code == 415 and named in body["detail"], body
                    assert "convert" in body["detail"], body
            assert resp.status_code != 500, f"{name}: {body}"
        assert requests.get(running.url + "/health", timeout=10).status_code == 200
    finally:
        running.stop()
    with capsys.disabled():
        _report("API POST /predict", rows)
