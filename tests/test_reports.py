"""`reports`: verdicts (helped, hurt, no clear change, too few requests) and the causes they
name, on made-up tables whose numbers decide each case."""

from __future__ import annotations

import pandas as pd
import pytest

from tritonlab.measuring import reports, results


def _row(variant, throughput, queue_ms, compute_ms, p95_ms=100.0, requests=200, level=8):
    return {"variant": variant, "concurrency": level, results.THROUGHPUT: throughput,
            "server queue (us)": queue_ms * 1000, "server compute infer (us)": compute_ms * 1000,
            results.P95: p95_ms * 1000, results.REQUESTS: requests}


@pytest.mark.parametrize("variant,outcome,cause", [
    (_row("less queue", 60.0, 20.0, 30.0), "helped", "mostly less waiting in the queue"),
    (_row("less compute", 60.0, 95.0, 10.0), "helped", "mostly less time in the model"),
    (_row("client side", 60.0, 100.0, 15.0), "helped", "the time outside the server did"),
    (_row("faster executions", 60.0, 40.0, 6.0), "helped",
     "mostly less time in the model, and so less waiting in the queue behind each execution"),
    (_row("slower executions", 20.0, 150.0, 45.0), "hurt", "each execution took 3.0x as long"),
    (_row("more queue", 35.0, 130.0, 16.0), "hurt", "more waiting in the queue"),
    (_row("more compute", 35.0, 101.0, 20.0), "hurt", "more time in the model"),
    (_row("outside", 35.0, 100.0, 15.0), "hurt", "perf_analyzer shares the cores"),
])
def test_explain_names_the_verdict_and_the_cause_its_numbers_show(variant, outcome, cause):
    """Baseline: 40 infer/s, 100 ms queued, 15 ms of compute per request, 200 requests."""
    df = pd.DataFrame([_row("baseline", 40.0, 100.0, 15.0), variant])
    story = reports.explain(df)
    assert story.startswith(f"{variant['variant']} against baseline, concurrency 8: 40.0 -> ")
    assert f": {outcome}, " in story and cause in story, story
    v = reports.verdict(df.iloc[0], df.iloc[1])
    assert (v.outcome, v.judged) == (outcome, True) and cause in v.cause


def test_a_change_within_the_tolerance_is_no_clear_change():
    base = _row("baseline", 40.0, 100.0, 15.0)
    v = reports.verdict(base, _row("b", 43.0, 90.0, 15.0))  # 1.075x, within the default 10 %
    assert v.outcome == reports.NO_CHANGE and v.cause == ""
    assert "no clear change (within the 10% the measurement's windows" in v.text()
    tight = dict(base, stability_percent=5)
    assert reports.verdict(tight, _row("b", 43.0, 90.0, 15.0)).outcome == reports.HELPED


@pytest.mark.parametrize("requests", [49, None])
def test_a_level_on_too_few_requests_gets_no_verdict(requests):
    """3x the throughput, but one side rests on 49 requests (or an unknown count)."""
    base, few = _row("baseline", 40.0, 100.0, 15.0), _row("few", 120.0, 5.0, 15.0,
                                                          requests=requests)
    v = reports.verdict(base, few)
    assert v.outcome == reports.TOO_FEW and not v.judged
    shown = "49" if requests else "?"
    assert f"measured on 200 and {shown} requests, fewer than 50: too few to judge" in v.text()
    assert "helped" not in v.text()
    assert "too few to judge" in reports.explain(pd.DataFrame([base, few]))


def test_explain_judges_at_the_highest_level_with_enough_requests():
    rows = [_row("baseline", 40.0, 10.0, 15.0, level=1), _row("baseline", 40.0, 100.0, 15.0),
            _row("b", 60.0, 8.0, 10.0, level=1), _row("b", 45.0, 150.0, 150.0, requests=6)]
    story = reports.explain(pd.DataFrame(rows))
    assert story.startswith("b against baseline, concurrency 1: 40.0 -> 60.0 infer/s (1.50x)")
    assert "helped, mostly less time in the model" in story


def test_compare_summary_and_winners_flag_the_levels_on_too_few_requests():
    base = pd.DataFrame([_row("baseline", 40.0, 100.0, 15.0, level=1),
                         _row("baseline", 40.0, 100.0, 15.0)])
    other = pd.DataFrame([_row("b", 60.0, 20.0, 30.0, level=1),
                          _row("b", 90.0, 20.0, 30.0, requests=6)])
    for df in (base, other):
        df[results.P50] = df[results.P99] = df[results.P95]
    text = reports.compare(base, other).splitlines()
    assert text[0] == "b against baseline:"
    assert text[1].startswith("  concurrency 1: 40.0 -> 60.0 infer/s (1.50x)")
    assert text[1].endswith("helped, mostly less waiting in the queue (one execution now serves "
                            "several requests, or executions run side by side)")
    assert "measured on 200 and 6 requests, fewer than 50" in text[2]
    table = reports.summary(other)
    assert table["note"].tolist() == ["", "fewer than 50 requests: rough, not judged"]
    best = reports.winners(pd.concat([base, other])).set_index("concurrency")
    assert best.loc[1, "highest throughput"] == "b (60.0/s)"
    assert best.loc[8, "highest throughput"] == "baseline (40.0/s)"
    assert best.loc[8, "left out (too few requests)"] == "b"


@pytest.mark.parametrize("compute_ms,says", [
    (13.0, "stayed about the same (13.0 and 13.0 ms): the model was already busy"),
    (17.0, "rose too, 13.0 -> 17.0 ms (1.31x): the executions themselves got slower"),
    (9.0, "fell, 13.0 -> 9.0 ms (0.69x)"),
])
def test_explain_queue_says_what_the_compute_time_did(compute_ms, says):
    """One busy instance: 8x the clients, about the same throughput, most latency queued."""
    df = pd.DataFrame([{"concurrency": 1, results.THROUGHPUT: 70.0, "server queue (us)": 30.0,
                        "server compute infer (us)": 13_000.0, results.P50: 14_000.0,
                        results.REQUESTS: 210},
                       {"concurrency": 8, results.THROUGHPUT: 72.0,
                        "server queue (us)": 90_000.0,
                        "server compute infer (us)": compute_ms * 1000, results.P50: 108_000.0,
                        results.REQUESTS: 216}])
    story = reports.explain_queue(df)
    assert "8x the clients gave 1.03x the throughput; at concurrency 8, 83% of the p50" in story
    assert says in story, story
    assert ("waited in the queue" in story) == (compute_ms == 13.0)
    df.loc[1, results.REQUESTS] = 30
    rough = reports.explain_queue(df)
    assert "30 requests measured" in rough and "Concurrency 8 rests on fewer than 50" in rough
    assert "the clients gave" not in rough and says not in rough


def test_winners_by_level():
    df = pd.DataFrame({"variant": ["a", "a", "b", "b"], "concurrency": [1, 8, 1, 8],
                       results.THROUGHPUT: [10.0, 12.0, 9.0, 30.0],
                       results.P95: [50e3, 400e3, 60e3, 200e3], results.REQUESTS: [100] * 4})
    win = reports.winners(df).set_index("concurrency")
    assert win.loc[1, "highest throughput"].startswith("a (10.0")
    assert win.loc[8, "highest throughput"].startswith("b (30.0")
    assert win.loc[8, "lowest p95 latency"] == "b (200 ms)"
    assert win.loc[8, "variants judged"] == 2 and win.loc[8, "left out (too few requests)"] == ""


def test_course_run_keeps_the_runs_since_the_newest_baseline_of_the_model():
    rows = [("baseline", "food_classifier", "2026-11-01T10:00:00+00:00"),   # an earlier course run
            ("old variant", "food_classifier", "2026-11-01T10:05:00+00:00"),
            ("baseline", "food_classifier", "2026-11-02T09:00:00+00:00"),   # this one
            ("batching", "food_classifier", "2026-11-02T09:03:00+00:00"),
            ("ensemble", "food_captioning", "2026-11-02T09:30:00+00:00")]
    df = pd.DataFrame(rows, columns=["variant", "model", "date"])
    now = results.course_run(df)
    assert now["variant"].tolist() == ["baseline", "batching"]
    assert now["date"].min() == "2026-11-02T09:00:00+00:00"
    with pytest.raises(ValueError, match="no 'baseline' run of food_captioning is saved"):
        results.course_run(df, model="food_captioning")


def test_delay_cost_sets_the_queue_change_against_the_configured_delay():
    base = pd.DataFrame([_row("baseline", 40.0, 0.1, 15.0, level=1)])
    batched = pd.DataFrame([_row("batched", 38.0, 5.1, 15.0, level=1)])
    line = reports.delay_cost(base, batched, delay_ms=5.0)
    assert line == ("concurrency 1: queued 0.1 -> 5.1 ms per request (+5.0 ms); "
                    "max_queue_delay_microseconds lets a request wait up to 5 ms for others to "
                    "join its batch: the queue grew by 100% of that delay")
    batched.loc[0, results.REQUESTS] = 12
    assert reports.delay_cost(base, batched, 5.0).endswith("(fewer than 50 requests measured: "
                                                           "rough)")
    assert reports.delay_cost(base, batched, 5.0, level=8) == (
        "concurrency 8 was not measured in both runs")


# --- which runs count ----------------------------------------------------------------------------
def _saved(variant: str, date: str) -> None:
    df = pd.DataFrame({"concurrency": [8], results.THROUGHPUT: [100.0],
                       results.P95: [20_000.0]})
    meta = {"variant": variant, "model": "food_classifier", "date": date}
    results.save_run(results.PerfRun(df=df, meta=meta, raw={}, metrics=pd.DataFrame()))


@pytest.fixture
def saved_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITONLAB_RESULTS_DIR", str(tmp_path / "results"))
    return tmp_path / "results"


def test_with_nothing_saved_the_comparison_names_the_notebook_to_run(saved_runs):
    with pytest.raises(ValueError, match="no run is saved.*Run notebook 02 first") as raised:
        results.course_run(results.table())
    assert "KeyError" not in str(raised.value) and "'variant'" not in str(raised.value)
    _saved("baseline", "2026-12-01T10:00:00+00:00")
    assert "run notebook 03 first" in reports.explain(results.table(),
                                                      reference="dynamic batching")


def test_a_new_baseline_says_which_runs_of_the_last_course_run_are_left_out(saved_runs, caplog):
    _saved("baseline", "2026-12-01T10:00:00+00:00")
    _saved("dynamic batching", "2026-12-01T10:10:00+00:00")
    with caplog.at_level("INFO", logger="tritonlab"):
        _saved("baseline", "2026-12-01T11:00:00+00:00")
    assert "starts a new course run" in caplog.text and "dynamic batching" in caplog.text
    assert list(results.course_run(results.table())["variant"]) == ["baseline"]


def test_runs_dated_after_this_machine_s_clock_are_named(saved_runs, caplog):
    _saved("baseline", "2026-12-01T10:00:00+00:00")
    ahead = (pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=2)).isoformat()
    _saved("dynamic batching", ahead)
    with caplog.at_level("WARNING", logger="tritonlab"):
        results.table()
    assert "1 saved run(s) are dated after this machine's clock" in caplog.text
    assert "dynamic-batching" in caplog.text
