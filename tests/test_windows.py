"""Measurement windows that fit the model: a slow model measured in quick mode, on the real
server, and perf_analyzer's "window too short" outcomes recognised and measured again."""

from __future__ import annotations

import re
import shutil

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from tritonlab.measuring import perf, results
from tritonlab.serving import configs

from .conftest import add_slow_model

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def slow_model(triton):
    """tests/models/slow_model on the session's Triton: 0.5 s per execution, dynamic batching."""
    add_slow_model(triton.model_repository, {"max_queue_delay_microseconds": 100_000},
                   seconds="0.5")
    triton.reload_model("slow_model")
    yield "slow_model"
    triton.unload_model("slow_model")
    shutil.rmtree(triton.model_repository / "slow_model", ignore_errors=True)


def test_slow_model_is_measured_in_quick_mode(triton, slow_model, monkeypatch, capsys):
    """About 2 infer/s at concurrency 1: a 1.5 s window would hold 3 requests. The windows
    are fitted to the model (probe first), each level rests on at least 10 requests."""
    monkeypatch.setenv("TRITONLAB_QUICK", "1")
    opts = perf.PerfSettings.for_course([1, 4, 8], quick_concurrency=[1, 4])
    run = perf.run(triton, slow_model, "slow", opts, save=False, sample_metrics=False)
    out = capsys.readouterr().out
    df = run.df.set_index("concurrency")
    assert list(df.index) == [1, 4]
    assert re.search(r"concurrency 1: about [12]\.\d\d infer/s", out), out
    assert "ms windows (about 10 requests each)" in out
    assert (df["measurement_ms"] > 1500).all() and (df["request count"] >= 10).all()
    assert (df["measurement_mode"] == "time_windows").all()
    assert 1.2 < df.loc[1, results.THROUGHPUT] < 2.2           # two requests per second or so
    assert df.loc[4, results.THROUGHPUT] > 2 * df.loc[1, results.THROUGHPUT]  # batched: 4 at a time
    assert 0.5e6 < df.loc[1, results.P50] < 0.75e6               # microseconds


def test_no_valid_requests_is_measured_again_with_longer_windows(triton, slow_model, capsys):
    """Windows fixed at 100 ms (no probe) hold no finished request of a 0.5 s model: perf_analyzer
    says so, and the run measures again with windows three times as long."""
    opts = perf.PerfSettings(concurrency=[1], measurement_ms=100, max_trials=4, min_requests=3,
                             adapt_windows=False)
    run = perf.run(triton, slow_model, "slow, short windows", opts, save=False,
                   sample_metrics=False)
    out = capsys.readouterr().out
    assert ("concurrency 1: no request finished inside a window; measuring again with 300 ms "
            "windows") in out
    row = run.df.iloc[0]
    assert row["measurement_ms"] >= 300 and row["request count"] >= 1
    assert row[results.THROUGHPUT] > 0


def test_windows_are_planned_from_the_rate():
    opts = perf.PerfSettings(measurement_ms=1500, min_requests=10, stability_percent=10)
    assert perf.plan_window(opts, 40.0) == perf.Window(1500, 10)      # fast: unchanged
    assert perf.plan_window(opts, None) == perf.Window(1500, 10)      # unknown: unchanged
    slow = perf.plan_window(opts, 0.5)                                 # 10 requests: 20 s
    assert slow.ms == 20_000 and slow.stability_percent == 30
    capped = perf.plan_window(perf.PerfSettings(min_requests=10, max_window_ms=60_000), 0.01)
    assert capped.ms == 60_000
    # answered 8 at a time (a dynamic batch): a window spans 24 requests, 3 batches, and may
    # count one batch more or less than the next
    busy = perf.plan_window(opts, 1.2, group=8)
    assert busy.ms == 20_000 and busy.stability_percent == 35
    assert perf.plan_window(opts, 1.2, group=2).ms == 8_400            # 10 requests
    assert perf.plan_window(opts, 1.2, group=2).stability_percent == 30
    # 8 clients, answered one at a time: each request takes about 8 / 0.64 = 12.5 s, so the
    # window holds 16 requests (two latencies), not 10, with the tolerance 10 requests allow
    naive = perf.plan_window(opts, 0.64, group=1, concurrency=8)
    assert naive == perf.Window(25_000, 30)
    assert perf.window_requests(opts, 1, 8) == 16 and perf.window_requests(opts, 8, 8) == 24
    assert perf.plan_window(opts, 1.2, group=8, concurrency=8) == busy  # batches decide there


def test_answer_groups_come_from_the_served_configs(triton):
    """A model that batches dynamically answers up to min(concurrency, its max_batch_size) at a
    time; an ensemble, as its batching steps do; one that does not, one at a time."""
    classifier = triton.model_config("food_classifier")
    assert perf.answer_group(triton, "food_classifier", 8) == (
        min(8, classifier["max_batch_size"]) if "dynamic_batching" in classifier else 1)
    captioning = triton.model_config("conditional_captioning")
    expected = captioning["max_batch_size"] if "dynamic_batching" in captioning else 1
    assert perf.answer_group(triton, "food_captioning", 16) == expected
    assert perf.answer_group(triton, "food_captioning", 2) == min(2, expected)
    assert perf.answer_group(triton, "no_such_model", 8) == 1


def test_an_ensemble_answers_as_its_last_step_releases():
    """A classifier batching 8 in front of a captioner that captions one image at a time (the
    naive variant): the captions still come back one by one, so the ensemble's group is 1; with
    the served captioner, which batches, it is the captioner's batch."""
    from google.protobuf import json_format

    def as_served(cfg: mc.ModelConfig) -> dict:  # Triton's JSON form of a config
        return json_format.MessageToDict(cfg, preserving_proto_field_name=True)

    ensemble = as_served(configs.ensemble_config())
    classifier = as_served(configs.classifier_config(max_batch_size=8, dynamic_batching={}))
    naive = as_served(configs.captioning_config(**configs.CAPTIONING_VARIANTS["naive"]))
    served = as_served(configs.course_configs()["conditional_captioning"])
    assert "dynamic_batching" not in naive and "dynamic_batching" in served
    assert perf.group_of(classifier, {}, 8) == 8
    steps = {"food_classifier": classifier, "conditional_captioning": naive}
    assert perf.group_of(ensemble, steps, 8) == 1
    steps["conditional_captioning"] = served
    assert perf.group_of(ensemble, steps, 4) == min(4, served["max_batch_size"])


def test_outcomes_that_mean_too_short_get_a_remedy():
    opts = perf.PerfSettings(measurement_ms=1000, max_window_ms=9000)
    window = perf.Window(1000, 10)
    no_valid = "No valid requests recorded within time interval. Please use a larger time window."
    step, why = perf.remedy(window, no_valid, None, opts, 1)
    assert step.ms == 3000 and "no request finished" in why
    step, why = perf.remedy(window, "Request count: 2", 2, opts, 1)
    assert step.ms == 3000 and "rests on only 2 requests" in why
    unstable = "Failed to obtain stable measurement within 10 measurement windows"
    step, _ = perf.remedy(window, unstable, None, opts, 1)
    assert step == perf.Window(1000, 30)
    step, _ = perf.remedy(step, unstable, None, opts, 2)
    assert step == perf.Window(3000, 100)
    assert perf.remedy(perf.Window(9000, 100), unstable, None, opts, 3) is None  # at the limit
    assert perf.remedy(window, "Connection refused", None, opts, 1) is None


def test_request_count_is_read_from_perf_analyzers_output():
    text = "Request concurrency: 4\n  Client: \n    Request count: 174\n    Throughput: 58 infer/s"
    assert perf.request_count(text) == 174
    assert perf.request_count("no summary") is None
