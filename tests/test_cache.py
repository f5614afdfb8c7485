"""The response cache on the real server: what Triton counts as a hit, what a hit skips, what it
never stores; and the flags both of the course's servers start with."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi import HTTPException
from PIL import Image
from tritonclient.utils import InferenceServerException

from tritonlab import api, settings
from tritonlab.measuring import cache
from tritonlab.serving import clients, configs, deploy
from tritonlab.serving.embedded import EmbeddedTriton


def test_a_comment_changes_the_bytes_not_the_pixels(images):
    original = images[0].read_bytes()
    note = "shared from a phone"
    commented = cache.with_comment(original, note)
    assert commented != original and len(commented) == len(original) + 4 + len(note)
    pixels = [np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
              for data in (original, commented)]
    assert np.array_equal(*pixels)
    with pytest.raises(ValueError, match="not a JPEG"):
        cache.with_comment(b"\x89PNG\r\n\x1a\n", "x")
    with pytest.raises(ValueError, match="65,533"):
        cache.with_comment(original, "x" * 70_000)


def test_the_config_check_refuses_a_cache_triton_cannot_use():
    cfg = configs.classifier_variant("baseline")
    configs.set_response_cache(cfg)
    assert "response_cache {\n  enable: true\n}" in configs.to_text(cfg)
    configs.validate(cfg)
    cfg.model_transaction_policy.decoupled = True
    with pytest.raises(configs.ConfigError, match="decoupled"):
        configs.validate(cfg)
    cfg.model_transaction_policy.decoupled = False
    cfg.ClearField("dynamic_batching")
    cfg.sequence_batching.SetInParent()
    with pytest.raises(configs.ConfigError, match="sequence batcher"):
        configs.validate(cfg)
    configs.set_response_cache(cfg, enable=False)
    assert "response_cache" not in configs.to_text(cfg)


def test_both_servers_start_with_the_same_cache(tmp_path):
    server = EmbeddedTriton(model_repository=tmp_path, state_dir=tmp_path / "state")
    cmd = server.command(["food_classifier"], tmp_path / "backends")
    assert settings.cache_config_flag() in cmd
    cache_dir = next(c for c in cmd if c.startswith("--cache-dir=")).split("=", 1)[1]
    assert (Path(cache_dir) / "local" / "libtritoncache_local.so").exists()
    compose = yaml.safe_load((settings.ROOT / "compose.yaml").read_text())
    assert settings.cache_config_flag() in compose["services"]["triton"]["command"]


@pytest.fixture()
def cached_classifier(triton):
    cfg = configs.classifier_variant("baseline")
    configs.set_response_cache(cfg)
    deploy.deploy(triton, cfg)
    yield cfg
    deploy.restore_baseline(triton)


@pytest.mark.server
def test_the_repeat_is_a_hit_that_runs_nothing(triton, cached_classifier, images):
    before = cache.counters(triton.http_url, "food_classifier")
    gauges = cache.cache_metrics(triton.metrics_url).set_index("metric")["value"]
    table = cache.hit_and_miss(triton.http_url, "food_classifier", images[:3], rounds=2,
                               progress=False)
    assert list(table["cache"]) == ["miss", "hit"] * 6
    assert list(table["executions"]) == [1, 0] * 6
    assert table["same answer"].all()
    change = cache.hit_share(before, cache.counters(triton.http_url, "food_classifier"))
    assert (change["cache hits"], change["cache misses"], change["requests"]) == (6, 6, 12)
    assert change["hit share"] == 0.5 and change["executions"] == 6
    # the local cache's own gauges (the whole server) count the same hits and misses
    later = cache.cache_metrics(triton.metrics_url).set_index("metric")["value"]
    assert later["nv_cache_num_hits"] - gauges["nv_cache_num_hits"] == 6
    assert later["nv_cache_num_misses"] - gauges["nv_cache_num_misses"] == 6
    assert later["nv_cache_num_entries"] >= gauges["nv_cache_num_entries"] + 6
    words = cache.explain(table)
    assert "6 misses took a median" in words and "a hit took" in words
    assert "every hit gave the answer its miss had computed" in words
    few = cache.explain(table.head(4))  # 2 misses, 2 hits
    assert "too few requests" in few and "a hit took" not in few


@pytest.mark.server
def test_without_the_cache_nothing_is_counted_as_cached(triton, images):
    deploy.restore_baseline(triton)
    table = cache.hit_and_miss(triton.http_url, "food_classifier", images[:1], rounds=1,
                               progress=False)
    assert list(table["cache"]) == ["not cached", "not cached"]
    assert list(table["executions"]) == [1, 1]
    assert "counted no hit" in cache.explain(table)


@pytest.mark.server
def test_a_failed_request_comes_back_empty_and_the_clients_refuse_it(triton, cached_classifier,
                                                                      images):
    """Server 2.51 keeps a request the Python backend failed as an empty answer (contrary to
    the guide's "only successful requests are cached"): the repeat gets HTTP 200 and no
    outputs. The course's clients and API turn that into an error that says why."""
    corrupt = cache.with_comment(images[0].read_bytes()[:300], "cut short")  # a truncated JPEG
    with pytest.raises(InferenceServerException, match="cannot decode image"):
        clients.classify(triton.http_url, [corrupt])
    with pytest.raises(clients.EmptyAnswer, match="response cache"):
        clients.classify(triton.http_url, [corrupt])
    table = cache.repeat_request(triton.http_url, "food_classifier", corrupt, times=2)
    assert list(table["cache"]) == ["hit", "hit"]
    assert table["outcome"].str.startswith("EmptyAnswer").all()
    assert clients.classify(triton.http_url, [images[0]])[0].label  # still serving the rest
    # the API's call gets the same empty answer, and refuses it with the reason
    with pytest.raises(HTTPException) as refused:
        api.infer(triton.http_url, corrupt, model="food_classifier")
    assert refused.value.status_code == 422 and "response cache" in refused.value.detail


@pytest.mark.server
def test_the_ensemble_answers_a_repeat_without_running_its_steps(triton, images):
    ens = configs.ensemble_config()
    configs.set_response_cache(ens)
    deploy.deploy(triton, ens)
    try:
        steps = ["food_classifier", "conditional_captioning"]
        table = cache.hit_and_miss(triton.http_url, "food_captioning", images[1:2], rounds=1,
                                   executed=steps, progress=False)
        assert list(table["cache"]) == ["miss", "hit"]
        assert list(table["executions"]) == [2, 0], "a hit on the ensemble still ran its steps"
        assert table["same answer"].all() and ": " in table["answer"][1]  # with its caption
    finally:
        deploy.deploy(triton, configs.ensemble_config())
