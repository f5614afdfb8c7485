"""Classification through the real Triton over HTTP and gRPC, batched and with bad elements."""

from __future__ import annotations

import base64
import threading

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tritonlab.serving import clients, configs

pytestmark = pytest.mark.server

LABELS_TOLERANCE = 1e-4


def expected(reference, paths):
    return reference.classify([p.read_bytes() for p in paths])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_one_image(triton, images, reference, protocol):
    url = triton.http_url if protocol == "http" else triton.grpc_url
    [pred] = clients.classify(url, images[:1], protocol=protocol)
    [(label, prob)] = expected(reference, images[:1])
    assert pred.label == label
    assert 0 < pred.probability <= 1
    assert pred.probability == pytest.approx(prob, abs=LABELS_TOLERANCE)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("encoding", ["raw", "base64"])
def test_batch_is_answered_element_by_element(triton, images, reference, protocol, encoding):
    order = [images[i] for i in (3, 0, 5, 1, 1, 4, 2)]  # shuffled, one image twice
    url = triton.http_url if protocol == "http" else triton.grpc_url
    preds = clients.classify(url, order, protocol=protocol, encoding=encoding)
    want = expected(reference, order)
    assert len(preds) == len(order)
    for pred, (label, prob) in zip(preds, want):
        assert pred.label == label
        assert pred.probability == pytest.approx(prob, abs=LABELS_TOLERANCE)
    # the answers really differ per element, so the order check above means something
    assert len({round(p.probability, 5) for p in preds}) >= 4


def test_plain_kserve_json_request(triton, images, reference):
    body = {"inputs": [{"name": "INPUT_IMAGE", "shape": [2, 1], "datatype": "BYTES",
                        "data": [base64.b64encode(p.read_bytes()).decode() for p in images[:2]]}]}
    resp = requests.post(f"http://{triton.http_url}/v2/models/food_classifier/infer", json=body,
                         timeout=60)
    assert resp.status_code == 200, resp.text
    out = {o["name"]: o for o in resp.json()["outputs"]}
    assert out["FOOD_LABEL"]["shape"] == [2, 1]
    want = expected(reference, images[:2])
    assert out["FOOD_LABEL"]["data"] == [label for label, _ in want]
    assert out["PROBABILITY"]["data"] == pytest.approx([p for _, p in want], abs=LABELS_TOLERANCE)


@pytest.mark.parametrize("bad", [b"", b"hello, I am text", b"\xff\xd8\xff\xe0" + b"\x00" * 40,
                                 base64.b64encode(b"not an image either")])
def test_bad_element_fails_its_request_with_400(triton, images, bad):
    with pytest.raises(InferenceServerException) as err:
        clients.classify(triton.http_url, [images[0], bad])
    assert err.value.status() == "400"
    assert "INPUT_IMAGE element 1" in err.value.message()
    assert triton.is_ready()


def test_truncated_jpeg_is_refused(triton, images):
    data = images[0].read_bytes()
    with pytest.raises(InferenceServerException, match="cannot decode image"):
        clients.classify(triton.grpc_url, [data[: len(data) // 2]], protocol="grpc")


def test_corrupt_image_in_a_dynamic_batch_fails_only_its_request(triton, images, reference):
    """Seven clients at once into a dynamic batch; one sends a corrupt JPEG."""
    cfg = configs.classifier_config(dynamic_batching={"max_queue_delay_microseconds": 1_000_000,
                                                      "preferred_batch_size": [7]})
    triton.reload_model("food_classifier", config=cfg)
    try:
        before = clients.batch_size_counts(clients.model_stats(triton.http_url, "food_classifier"))
        payloads = [p.read_bytes() for p in images] + [b"\xff\xd8\xff\xe0corrupt" * 10]
        results: list = [None] * len(payloads)
        barrier = threading.Barrier(len(payloads))

        def send(i: int) -> None:
            client = httpclient.InferenceServerClient(triton.http_url, network_timeout=120)
            inp = httpclient.InferInput("INPUT_IMAGE", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[payloads[i]]], dtype=object))
            barrier.wait()
            try:
                res = client.infer("food_classifier", [inp])
                results[i] = (res.as_numpy("FOOD_LABEL")[0, 0].decode(),
                              float(res.as_numpy("PROBABILITY")[0, 0]))
            except InferenceServerException as exc:
                results[i] = exc
            finally:
                client.close()

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(payloads))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        after = clients.batch_size_counts(clients.model_stats(triton.http_url, "food_classifier"))
        new_sizes = {b: n - before.get(b, 0) for b, n in after.items() if n > before.get(b, 0)}
        assert max(new_sizes) >= 2, f"requests were not batched together: {new_sizes}"
        assert isinstance(results[-1], InferenceServerException)
        assert results[-1].status() == "400"
        want = expected(reference, images)
        for got, (label, prob) in zip(results[:-1], want):
            assert not isinstance(got, Exception), got
            assert got[0] == label and got[1] == pytest.approx(prob, abs=LABELS_TOLERANCE)
        assert triton.is_ready()
    finally:
        triton.reload_model("food_classifier")  # back to the config.pbtxt on disk
    served = requests.get(f"http://{triton.http_url}/v2/models/food_classifier/config",
                          timeout=10).json()
    assert "dynamic_batching" not in served


def test_statistics_count_requests(triton, images):
    before = clients.model_stats(triton.http_url, "food_classifier")["inference_count"]
    clients.classify(triton.http_url, images[:3])
    after = clients.model_stats(triton.http_url, "food_classifier")
    assert int(after["inference_count"]) - int(before) == 3
