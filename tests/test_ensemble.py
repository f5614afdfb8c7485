"""The food_captioning ensemble through the real Triton, over HTTP and gRPC."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tritonlab.assets import blip
from tritonlab.serving import configs

pytestmark = pytest.mark.server


def ask(triton, protocol: str, payloads: list[bytes]):
    lib = httpclient if protocol == "http" else grpcclient
    url = triton.http_url if protocol == "http" else triton.grpc_url
    client = lib.InferenceServerClient(url)
    try:
        inp = lib.InferInput("INPUT_IMAGE", [len(payloads), 1], "BYTES")
        inp.set_data_from_numpy(np.array(payloads, dtype=object).reshape(-1, 1))
        result = client.infer("food_captioning", [inp])
        return [(lb.decode(), float(p), c.decode()) for lb, p, c in zip(
            result.as_numpy("FOOD_LABEL").reshape(-1), result.as_numpy("PROBABILITY").reshape(-1),
            result.as_numpy("CAPTION").reshape(-1))]
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_several_images_in_one_request(triton, images, reference, protocol):
    answers = ask(triton, protocol, [p.read_bytes() for p in images[:4]])
    want = reference.classify([p.read_bytes() for p in images[:4]])
    assert len(answers) == 4
    for (label, prob, caption), (want_label, want_prob) in zip(answers, want):
        assert label == want_label and prob == pytest.approx(want_prob, abs=1e-4)
        assert caption.startswith(blip.code().prompt_for(label))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_corrupt_image_fails_its_request_only(triton, images, protocol):
    with pytest.raises(InferenceServerException) as err:
        ask(triton, protocol, [images[0].read_bytes(), b"\xff\xd8\xff\xe0 corrupt"])
    assert "INPUT_IMAGE element 1" in str(err.value)
    assert len(ask(triton, protocol, [images[1].read_bytes()])) == 1
    assert triton.is_ready()


def test_committed_ensemble_is_consistent():
    cfgs = configs.course_configs()
    configs.check_ensemble(cfgs["food_captioning"], cfgs)
    broken = configs.ensemble_config(max_batch_size=32)
    with pytest.raises(configs.ConfigError, match="exceeds"):
        configs.check_ensemble(broken, cfgs)
    mismatched = configs.captioning_config()
    mismatched.input[1].data_type = configs.mc.TYPE_FP32
    with pytest.raises(configs.ConfigError, match="expects TYPE_FP32"):
        configs.check_ensemble(cfgs["food_captioning"],
                               dict(cfgs, conditional_captioning=mismatched))


def test_dynamic_batching_on_the_captioning_step(triton, images):
    cfg = configs.captioning_config(dynamic_batching={"max_queue_delay_microseconds": 20000})
    try:
        triton.reload_model("conditional_captioning", config=cfg)
        assert len(ask(triton, "grpc", [p.read_bytes() for p in images[:2]])) == 2
    finally:
        triton.reload_model("conditional_captioning")


def test_perf_run_splits_an_ensemble_by_step_and_sums_their_queues(triton):
    """perf_analyzer on the ensemble: one row per composing model and level, and the ensemble's
    queue time is its steps' (perf_analyzer itself reports about 0 for an ensemble)."""
    from tritonlab.measuring import perf

    # one count of requests, no stability windows: the split and the sum are what is checked,
    # not how steady the figures are (windows fitted to the captioner took 35-115 s here)
    opts = perf.PerfSettings(concurrency=[2], min_requests=6, stability_windows=False)
    run = perf.run(triton, "food_captioning", "ensemble", opts, save=False,
                   sample_metrics=False)
    steps = run.steps.set_index("step")
    assert set(steps.index) == {"food_classifier", "conditional_captioning"}
    assert (steps["concurrency"] == 2).all()
    queued = run.df.iloc[0]["server queue (us)"]
    assert queued == steps["server queue (us)"].sum()
    assert queued > 0  # two requests in flight on one instance each: someone waits


def test_a_step_with_a_smaller_max_batch_size_keeps_the_ensemble_served(triton, images):
    """Triton unloads an ensemble whose max_batch_size exceeds a step's (as a Model Analyzer
    config of max_batch_size 1 would make it): deploying such a step lowers the ensemble's to
    fit, and putting the step back brings the committed ensemble back."""
    from tritonlab.serving import clients, deploy

    small = configs.classifier_variant("baseline")
    small.max_batch_size = 1
    try:
        deploy.deploy(triton, small)
        states = {m["name"]: m["state"] for m in triton.model_states()}
        assert states["food_captioning"] == "READY"
        served = configs.read_config(triton.model_repository / "food_captioning" / "config.pbtxt")
        assert served.max_batch_size == 1
        assert clients.caption(triton.http_url, images[:1])[0].caption
    finally:
        deploy.restore_baseline(triton)
    served = configs.read_config(triton.model_repository / "food_captioning" / "config.pbtxt")
    assert served == configs.course_configs()["food_captioning"]
    assert clients.caption(triton.http_url, images[:2])[1].caption  # two in one request again
    assert configs.fitted_ensembles(triton.model_repository, "food_classifier") == []
