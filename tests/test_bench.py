"""`make bench`'s verdicts, on made-up figures: each target met or missed from the numbers."""

from __future__ import annotations

import copy

from tritonlab.measuring import bench
from tritonlab.serving import configs


def _level(throughput: float, p95_s: float) -> dict:
    return {"throughput": throughput, "p95_ms": p95_s * 1000, "requests": 24}


FIGURES = {
    "levels": [1, 4, 8],
    "naive": {1: _level(0.6, 1.7), 4: _level(0.6, 7.0), 8: _level(0.6, 14.0)},
    "fastest": {1: _level(0.5, 2.0), 4: _level(0.9, 5.0), 8: _level(1.3, 7.0)},
    "fastest, cores in halves": {8: _level(0.7, 12.0)},
    "fastest_bfloat16": {8: _level(3.0, 3.0)},
    "in_process": {"fastest": {"images_per_s": 1.35, "threads": 2,
                               "seconds_per_image": {"vision encoder": 0.55,
                                                     "text decoder": 0.2},
                               "gflop_per_image": {"vision encoder": 110.0,
                                                   "text decoder": 20.0},
                               "gemm_peak_gflops": 200.0},
                   "naive": {"images_per_s": 0.65, "threads": 2,
                             "seconds_per_image": {"generate": 1.5},
                             "gflop_per_image": {"generate": 130.0},
                             "gemm_peak_gflops": 200.0}},
    "captions_equal_eager_float32": {"fastest": 8, "naive": 8, "fastest_bfloat16": 4},
    "captions_compared": 8,
    "weights": {"parameters_m": 224.0, "disk_mib": 855, "stand_in": True},
    "footprint": {"load_s": 9.5, "rss_mib_per_instance": 1400},
    "reload_s": 10.2,
}


def _verdicts(figures: dict) -> dict[str, tuple[str, bool | None]]:
    return {row[0]: (row[1], row[3]) for row in bench.captioning_verdicts(figures)}


def test_goal_met_when_fastest_doubles_naive_with_no_worse_p95():
    v = _verdicts(FIGURES)
    assert v["captioning fastest vs naive at c=8"] == ("2.17x (1.30 vs 0.60 infer/s)", True)
    assert v["captioning fastest vs naive p95 at c=8"] == ("7.0 vs 14.0 s", True)
    assert v["captioning served / in-process (fastest, c=8)"] == ("96% (1.30 vs 1.35/s)", True)
    assert v["captions equal eager float32 generate(): fastest"] == ("8 of 8", True)
    assert v["captions equal eager float32: bfloat16 (opt-in)"] == ("4 of 8", None)


def test_goal_missed_when_slower_or_captions_change():
    worse = copy.deepcopy(FIGURES)
    worse["fastest"][8] = _level(1.1, 15.0)
    worse["captions_equal_eager_float32"]["fastest"] = 7
    worse["in_process"]["fastest"]["images_per_s"] = 1.2
    v = _verdicts(worse)
    assert v["captioning fastest vs naive at c=8"][1] is False
    assert v["captioning fastest vs naive p95 at c=8"][1] is False
    assert v["captioning served / in-process (fastest, c=8)"] == ("92% (1.10 vs 1.20/s)", True)
    assert v["captions equal eager float32 generate(): fastest"] == ("7 of 8", False)


def test_memory_missing_outside_this_machine_is_said():
    docker = copy.deepcopy(FIGURES)
    docker["footprint"] = {"load_s": 9.5, "rss_mib_per_instance": None}
    assert _verdicts(docker)["captioner: RSS per instance"] == ("n/a", None)


def bench_figures() -> dict:
    """A whole `bench.run` result, made up, without the overload step."""
    return {"baseline_c8": {"throughput": 30.0, "p95_ms": 300.0},
            "fastest_c8": {"throughput": 95.0, "p95_ms": 120.0},
            "in_process": {"throughput": 100.0, "served_throughput": 95.0,
                           "served_share": 0.95}, "reload_s": 6.0, "restart_s": 12.0,
            "reload_torch_s": 6.5, "captioning": FIGURES,
            "ensemble_overhead_ms": {"ensemble_ms": 140.0, "two_calls_ms": 125.0},
            "memory_all_models_mib": 1400.0,
            "memory_per_extra_instance_mib": {"onnxruntime": 200.0, "torch": 900.0},
            "load_classifier_c32": {"concurrency": 32, "seconds": 61.0,
                                    "requests_ok": 6000, "requests_failed": 0,
                                    "perf_analyzer_error": None,
                                    "rss_end_mib": 1500.0, "rss_after_warmup_mib": 1450.0,
                                    "rss_growth": 1500 / 1450 - 1},
            "load_ensemble_c8": {"concurrency": 8, "seconds": 62.0, "requests_ok": 1200,
                                 "requests_failed": 3, "perf_analyzer_error": None,
                                 "rss_end_mib": 1700.0, "rss_after_warmup_mib": 1500.0,
                                 "rss_growth": 1700 / 1500 - 1}}


def test_bench_verdicts_compare_against_the_targets():
    figures = bench_figures()
    met = {row["figure"]: row["met"] for row in bench.verdicts(figures)}
    assert met["load classifier c=32, 61 s: failed requests"] is True
    assert met["load classifier: RSS end vs after warm-up"] is True    # +3.4%
    assert met["load ensemble c=8, 62 s: failed requests"] is False    # 3 failed
    assert met["load ensemble: RSS end vs after warm-up"] is False     # +13%
    assert met["fastest vs baseline throughput at c=8"] is True       # 3.17x
    assert met["fastest vs baseline p95 at c=8"] is True
    assert met["served / in-process throughput (fastest, in turns)"] is True     # 95%
    assert met["reload with changed config (median)"] is False        # 6 s > 5 s
    assert met["full restart"] is None                                 # reported only


def test_a_worker_that_dies_without_answering_is_reported_at_once():
    """The in-process runs wait on a child process: one that dies (an import error, a crash)
    is reported with its exit code, not waited on until the timeout."""
    import multiprocessing as mp
    import os
    import time

    import pytest

    from tritonlab.measuring import processes

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=os._exit, args=(3,))
    proc.start()
    began = time.monotonic()
    with pytest.raises(RuntimeError, match="exit code 3"):
        processes.answer([proc], out, timeout=120)
    assert time.monotonic() - began < 60


def test_limits_give_each_part_its_share_of_the_gemm_peak_and_the_bound():
    v = _verdicts(FIGURES)
    # 110 GFLOP in 0.55 s = 200 GFLOP/s = the peak; 20 GFLOP in 0.2 s = 100 GFLOP/s = half
    assert v["captioning fastest: share of float32 GEMM peak"] == (
        "vision encoder 100%, text decoder 50% (peak 200 GFLOP/s)", None)
    # encoder at the peak: 110 / 200 = 0.55 s, + decoder 0.2 s = 0.75 s against naive's 1.5 s
    assert v["captioning vs naive, encoder at GEMM peak (bound)"] == (
        "2.00x (1.50 vs 0.75 s/image)", None)


def test_the_overload_rows_report_both_configs():
    figures = {"overload": {"offered_rps": 270.0, "requests": 2000,
                            "policy": configs.OVERLOAD_QUEUE_POLICY,
                            "without": {"answered p99 (ms)": 2400.0},
                            "with": {"answered p99 (ms)": 410.0, "refused share": 0.31,
                                     "slowest refusal (ms)": 290.0}}}
    rows = {row["figure"]: row["measured"] for row in bench.verdicts(
        {**bench_figures(), **figures})}
    assert rows["overload 270 req/s: answered p99 without vs with queue policy"] == \
        "2400 vs 410 ms"
    assert rows["overload with queue policy: refused, slowest refusal"] == \
        "31%, 290 ms (timeout 200 ms)"



def test_the_model_analyzer_row_sets_its_best_against_the_hand_tuned_one():
    found = {"budget_ms": 50.0, "configs": 5, "seconds": 92.0,
             "hand_tuned": {"throughput": 333.1, "p95_ms": 28.9, "within_budget": True},
             "best": {"config": "food_classifier_config_4", "instance_group": "2:CPU",
                      "max_batch_size": 2, "concurrency": 4, "throughput": 343.6,
                      "p95_ms": 16.9}}
    name = "Model Analyzer's best vs hand-tuned fastest, p95 <= 50 ms"
    rows = {r["figure"]: r["measured"] for r in bench.verdicts(
        {**bench_figures(), "model_analyzer": found})}
    assert rows[name] == ("344/s (food_classifier_config_4, 2:CPU, max batch 2, c=4) vs "
                          "333/s (c=8); 5 configs in 92 s")
    over = {**found, "hand_tuned": {"throughput": 400.0, "p95_ms": 80.0, "within_budget": False}}
    over.pop("best")
    rows = {r["figure"]: r["measured"] for r in bench.verdicts(
        {**bench_figures(), "model_analyzer": over})}
    assert rows[name].startswith("none within budget vs over budget (p95 80 ms at c=8)")
    missing = {r["figure"]: r["measured"] for r in bench.verdicts(
        {**bench_figures(), "model_analyzer": {"error": "Model Analyzer is not installed"}})}
    assert missing[name] == "not measured: Model Analyzer is not installed"
