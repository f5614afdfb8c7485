"""The FastAPI endpoint through real HTTP: uvicorn on a free port in front of the real Triton."""

from __future__ import annotations

import pytest
import requests

from tritonlab import api
from tritonlab.assets import blip
from tritonlab.assets.repository import network

from .conftest import free_ports

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def endpoint(triton, monkeypatch_module):
    monkeypatch_module.setenv("TRITONLAB_API_MAX_UPLOAD", "200000")
    running = api.serve_in_background(port=free_ports(1)[0], triton=triton.http_url)
    yield running.url
    running.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def post(url: str, name: str, data: bytes, mime: str = "image/jpeg") -> requests.Response:
    return requests.post(url + "/predict", files={"file": (name, data, mime)}, timeout=120)


def test_health_reports_ready(endpoint):
    resp = requests.get(endpoint + "/health", timeout=10)
    assert resp.status_code == 200 and resp.json()["model_ready"] is True


def test_predict_returns_label_probability_caption(endpoint, images):
    resp = post(endpoint, images[0].name, images[0].read_bytes())
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["label"] in network().LABELS
    assert 0 < body["probability"] <= 1
    assert body["caption"].startswith(blip.code().prompt_for(body["label"]))


@pytest.mark.parametrize("name,data,status", [
    ("notes.txt", b"just some text, not a photo", 415),
    ("empty.jpg", b"", 400),
    ("half.jpg", None, 415),
    ("huge.jpg", b"\xff\xd8\xff" + b"\x00" * 300_000, 413),
])
def test_bad_uploads_get_a_4xx_with_a_message(endpoint, images, name, data, status):
    if data is None:
        whole = images[0].read_bytes()
        data = whole[: len(whole) // 2]
    resp = post(endpoint, name, data)
    assert resp.status_code == status, resp.text
    detail = resp.json()["detail"]
    assert isinstance(detail, str) and detail and "Traceback" not in detail


def test_missing_file_field_is_a_4xx(endpoint):
    resp = requests.post(endpoint + "/predict", data={"other": "x"}, timeout=10)
    assert resp.status_code == 422


def test_swagger_page_and_schema(endpoint):
    assert requests.get(endpoint + "/docs", timeout=10).status_code == 200
    assert "/predict" in requests.get(endpoint + "/openapi.json", timeout=10).json()["paths"]


def test_triton_down_gives_503(images):
    nowhere = f"127.0.0.1:{free_ports(1)[0]}"
    running = api.serve_in_background(port=free_ports(1)[0], triton=nowhere)
    try:
        health = requests.get(running.url + "/health", timeout=10)
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        resp = post(running.url, images[0].name, images[0].read_bytes())
        assert resp.status_code == 503 and "make serve" in resp.json()["detail"]
    finally:
        running.stop()


def test_an_api_already_running_in_front_of_the_same_triton_is_used_not_fought(images):
    """On the GPU node the Jupyter container runs the API from the start (its CMD) on the port
    notebook 11 asks for: the notebook uses it, and leaves it running. Anything else on the
    port is refused with its owner named."""
    nowhere = f"127.0.0.1:{free_ports(1)[0]}"
    first = api.serve_in_background(port=free_ports(1)[0], triton=nowhere)
    port = int(first.url.rsplit(":", 1)[1])
    try:
        again = api.serve_in_background(port=port, triton=nowhere)
        assert again.process is None and again.url == first.url
        again.stop()
        assert first.process.poll() is None  # still serving
        assert requests.get(first.url + "/health", timeout=10).json()["triton_url"] == nowhere
        elsewhere = f"127.0.0.1:{free_ports(1)[0]}"
        with pytest.raises(RuntimeError, match=f"Port {port} is already in use by pid"):
            api.serve_in_background(port=port, triton=elsewhere)
    finally:
        first.stop()


def test_the_first_uploads_of_a_fresh_api_arrive_together(triton, images):
    """A freshly started API process, its first 12 uploads at once (good images and broken
    ones): each gets its own answer, 200 or 415, and none an internal error."""
    from concurrent.futures import ThreadPoolExecutor

    fresh = api.serve_in_background(port=free_ports(1)[0], triton=triton.http_url)
    uploads = [(images[i % 3].name, images[i % 3].read_bytes()) if i % 2 else
               ("broken.jpg", images[0].read_bytes()[:300]) for i in range(12)]
    try:
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda u: post(fresh.url, *u), uploads))
    finally:
        fresh.stop()
    codes = [r.status_code for r in answers]
    assert codes == [415 if i % 2 == 0 else 200 for i in range(12)], [
        r.text[:200] for r in answers]


def test_a_refusal_under_load_gives_503_with_retry_after(endpoint, triton, images):
    """Triton's queue policy refuses what does not fit its queue; the API passes that on as
    503 with Retry-After, and serves the requests Triton accepted."""
    from concurrent.futures import ThreadPoolExecutor

    from tritonlab.serving import configs, deploy

    cfg = configs.course_configs()["conditional_captioning"]
    configs.set_queue_policy(cfg, max_queue_size=1, timeout_microseconds=10_000_000)
    data = images[0].read_bytes()
    try:
        deploy.deploy(triton, cfg)
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda _: post(endpoint, images[0].name, data), range(12)))
    finally:
        deploy.restore_baseline(triton, "conditional_captioning")
    refused = [r for r in answers if r.status_code == 503]
    served = [r for r in answers if r.status_code == 200]
    assert refused and served and len(refused) + len(served) == 12
    for resp in refused:
        assert resp.headers["Retry-After"] == str(api.RETRY_AFTER_S)
        assert "overloaded" in resp.json()["detail"]
    assert all(r.json()["caption"] for r in served)
