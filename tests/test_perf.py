"""perf_analyzer runs, saved results, server metrics and config deployment, on the real server."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest
import requests

from tritonlab.measuring import metrics, perf, reports, results
from tritonlab.serving import configs, deploy

pytestmark = pytest.mark.server

QUICK = perf.PerfSettings(concurrency=[2, 1], measurement_ms=1000, max_trials=5)


@pytest.fixture()
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITONLAB_RESULTS_DIR", str(tmp_path / "results"))
    return tmp_path / "results"


def test_every_flag_the_course_uses_exists_in_perf_analyzer():
    proc = subprocess.run([str(perf.binary()), "--help"], capture_output=True, text=True,
                          env=perf.environment())
    help_text = proc.stdout + proc.stderr  # 2.51 prints its usage on stderr
    cmd = perf.command("127.0.0.1:8000", "m", 4, perf.Path("x.csv"),
                       perf.PerfSettings(collect_metrics=True), "http://127.0.0.1:8002/metrics")
    flags = [c for c in cmd if c.startswith("--")]
    assert flags
    for flag in flags:
        assert flag in help_text, f"perf_analyzer 2.51 has no {flag}"
    assert cmd[cmd.index("--concurrency-range") + 1] == "4:4"


def test_run_measures_saves_and_samples_metrics(triton, results_dir):
    run = perf.run(triton, "food_classifier", "test baseline", QUICK, notes="test")
    df = run.df
    assert list(df["concurrency"]) == [1, 2]  # ordered by concurrency, whatever was asked
    assert (df[results.THROUGHPUT] > 0).all()
    assert (df[results.P95] >= df[results.P50]).all()
    for column in results.BREAKDOWN + [results.P99, "client send (us)"]:
        assert column in df.columns
    saved = json.loads(run.path.read_text())
    meta = saved["meta"]
    assert meta["server_version"] == "2.51.0" and meta["mode"] == "embedded"
    assert meta["variant"] == "test baseline" and meta["concurrency"] == [2, 1]
    assert meta["config"]["name"] == "food_classifier" and "CPU x1" in meta["device"]
    # The windows are QUICK's 1000 ms or longer, as long as this machine's speed needs; the
    # command perf_analyzer ran says the window the run recorded for that level.
    planned = int(df.set_index("concurrency").loc[2, "measurement_ms"])
    assert planned >= QUICK.measurement_ms
    assert f"--measurement-interval {planned} " in meta["commands"][0]
    assert not list(results_dir.glob("*.tmp"))
    import pandas as pd

    csv = pd.read_csv(run.path.with_suffix(".csv"))
    assert list(csv["concurrency"]) == [1, 2] and results.THROUGHPUT in csv.columns
    assert not run.metrics.empty and run.metrics["requests/s"].max() > 0
    assert run.metrics["failed requests"].sum() == 0
    table = results.table()
    assert set(table["variant"]) == {"test baseline"}
    latest = results.latest("test baseline")
    assert latest is not None and latest[1] == run.path
    story = reports.explain_queue(df)
    assert "concurrency 1" in story and "concurrency 2" in story


def test_unknown_model_gives_a_clear_error(triton, results_dir):
    with pytest.raises(perf.PerfError, match="not loaded or not ready"):
        perf.run(triton, "no_such_model", "x", QUICK, sample_metrics=False)
    assert not results_dir.exists() or not list(results_dir.iterdir())


def test_bad_input_file_gives_a_clear_error(triton, results_dir, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    opts = perf.PerfSettings(concurrency=[1], measurement_ms=1000, input_data=str(bad))
    with pytest.raises(perf.PerfError, match="input file"):
        perf.run(triton, "food_classifier", "x", opts, sample_metrics=False)


def test_stopped_server_is_reported_before_running(repository, tmp_path):
    from tritonlab.serving.embedded import EmbeddedTriton
    from tritonlab.settings import TritonAddress


    down = EmbeddedTriton(repository, address=TritonAddress.free(), state_dir=tmp_path)
    with pytest.raises(perf.PerfError, match="not ready"):
        perf.run(down, "food_classifier", "x", QUICK)


def test_prometheus_parsing_and_rates():
    text = """# HELP nv_cpu_utilization CPU utilization rate [0.0 - 1.0]
nv_cpu_utilization 0.5
nv_inference_request_success{model="food_classifier",version="1"} 10
nv_inference_request_success{model="other",version="1"} 99
nv_inference_queue_duration_us{model="food_classifier",version="1"} 2000
nv_inference_compute_infer_duration_us{model="food_classifier",version="1"} 30000
nv_inference_count{model="food_classifier",version="1"} 10
nv_inference_exec_count{model="food_classifier",version="1"} 5
nv_gpu_utilization{gpu_uuid="GPU-a"} 0.2
nv_gpu_utilization{gpu_uuid="GPU-b"} 0.4
"""
    first = metrics.snapshot(metrics.parse(text), "food_classifier")
    assert first["request_success"] == 10 and first["gpu_utilization"] == pytest.approx(0.3)
    second = dict(first, request_success=20, queue_duration_us=4000,
                  compute_infer_duration_us=60000, count=20, exec_count=7)
    frame = metrics.to_frame([dict(first, **{"time (s)": 0.0}),
                              dict(second, **{"time (s)": 2.0})])
    row = frame.iloc[0]
    assert row["requests/s"] == 5 and row["queue per request (ms)"] == pytest.approx(0.2)
    assert row["compute per request (ms)"] == pytest.approx(3.0)
    assert row["mean batch size"] == 5 and row["gpu utilization (%)"] == pytest.approx(30)


def test_gpu_config_is_written_as_is_and_run_on_cpu(triton, capsys):
    cfg = configs.classifier_config(kind="KIND_GPU", gpus=[0])
    try:
        deploy.deploy(triton, cfg, gpu_count=0)
        on_disk = (triton.model_repository / "food_classifier" / "config.pbtxt").read_text()
        assert "kind: KIND_GPU" in on_disk and "gpus: 0" in on_disk
        assert "NOTE: this machine has no GPU" in capsys.readouterr().out
        served = requests.get(f"http://{triton.http_url}/v2/models/food_classifier/config",
                              timeout=10).json()
        assert served["instance_group"][0]["kind"] == "KIND_CPU"
        meta = perf.describe_run(triton, "food_classifier", "gpu", QUICK, [])
        assert meta["gpu_config_on_cpu"] is True and "CPU x1" in meta["device"]
    finally:
        deploy.restore_baseline(triton)
    meta = perf.describe_run(triton, "food_classifier", "baseline", QUICK, [])
    assert meta["gpu_config_on_cpu"] is False
    assert "kind: KIND_CPU" in (triton.model_repository / "food_classifier" /
                                "config.pbtxt").read_text()


def test_deploy_by_restart_reports_seconds(triton, capsys):
    cfg = configs.classifier_config(max_batch_size=8)
    try:
        seconds = deploy.deploy(triton, cfg, how="restart")
        assert seconds > 0 and triton.is_ready()
        out = capsys.readouterr().out
        assert "+max_batch_size: 8" in out and "ready after restart" in out
    finally:
        deploy.restore_baseline(triton)


def test_invalid_config_is_refused_before_anything_is_written(triton):
    path = triton.model_repository / "food_classifier" / "config.pbtxt"
    before = path.read_text()
    cfg = configs.classifier_config(dynamic_batching={"preferred_batch_size": [64]})
    with pytest.raises(configs.ConfigError, match="outside 1..max_batch_size"):
        deploy.deploy(triton, cfg)
    assert path.read_text() == before


def test_load_run_counts_requests_and_memory_on_the_real_server(triton):
    """The load figure of `make bench`, shortened to a few seconds: Triton's own counters."""
    from tritonlab.measuring import bench

    deploy.restore_baseline(triton)
    load = bench.load_run(triton, "food_classifier", concurrency=4, seconds=3)
    assert load["perf_analyzer_error"] is None
    assert load["requests_failed"] == 0
    assert load["requests_ok"] >= 3  # at least one request per window, counted by Triton
    assert load["throughput"] > 0
    assert load["rss_end_mib"] > 100 and load["rss_after_warmup_mib"] > 100


def test_compare_and_explain_tell_the_measured_story(triton):
    """Two real runs (baseline and dynamic batching), told in numbers by perf and results.
    Each level is measured once over a fixed count of requests (stability windows took this
    test 2 minutes): what is tested is how the figures are told, so the verdicts may well say
    the runs were too short to judge (tests/test_reports.py judges made-up tables)."""
    opts = perf.PerfSettings(concurrency=[1, 4], min_requests=20, stability_windows=False)
    deploy.restore_baseline(triton)
    base = perf.run(triton, "food_classifier", "baseline", opts, save=False,
                    sample_metrics=False).df
    deploy.deploy(triton, configs.classifier_config(
        dynamic_batching={"preferred_batch_size": [4], "max_queue_delay_microseconds": 5000}))
    try:
        batched = perf.run(triton, "food_classifier", "batched", opts, save=False,
                           sample_metrics=False).df
    finally:
        deploy.restore_baseline(triton)
    text = reports.compare(base, batched)
    ratio = batched.iloc[1][results.THROUGHPUT] / base.iloc[1][results.THROUGHPUT]
    assert text.startswith("batched against baseline:")
    assert f"concurrency 4: {base.iloc[1][results.THROUGHPUT]:.1f} -> " in text
    assert f"({ratio:.2f}x)" in text
    v = reports.verdict(base.iloc[1], batched.iloc[1])
    assert v.text() in text and v.requests == (int(base.iloc[1][results.REQUESTS]),
                                                int(batched.iloc[1][results.REQUESTS]))
    story = reports.explain(pd.concat([base, batched], ignore_index=True))
    judged = [lv for lv in (1, 4) if reports.verdict(base.iloc[lv // 4], batched.iloc[lv // 4],
                                                     lv).judged]
    level = (judged or [4])[-1]
    assert story.startswith(f"batched against baseline, concurrency {level}: ")
    assert reports.explain(batched).startswith("no 'baseline' run saved")
    mixed = pd.concat([base.assign(model="food_classifier"),
                       batched.assign(model="food_classifier"),
                       batched.assign(variant="ensemble", model="food_captioning")])
    assert "ensemble" not in reports.explain(mixed)  # other models are not compared


def test_unstable_measurement_is_retried_looser_and_says_so(triton, capsys):
    """A 0 % tolerance is never met; the run measures again at 30 % and records it per row.
    Windows are not fitted to the model's speed here: on a slow machine the plan would widen
    the tolerance itself before the first measurement."""
    deploy.restore_baseline(triton)
    opts = perf.PerfSettings(concurrency=[2], measurement_ms=1000, stability_percent=0,
                             max_trials=3, adapt_windows=False)
    run = perf.run(triton, "food_classifier", "retried", opts, save=False, sample_metrics=False)
    out = capsys.readouterr().out
    assert "concurrency 2: not stable within 0%; measuring again with 30%" in out
    row = run.df.iloc[0]
    assert row["stability_percent"] in (30, 100)
    assert row["measurement_ms"] == (1000 if row["stability_percent"] == 30 else 3000)
    assert row[results.THROUGHPUT] > 0


def _saved_run(variant: str, date: str, throughput: float) -> results.PerfRun:
    df = pd.DataFrame([{"variant": variant, "concurrency": 1, results.THROUGHPUT: throughput}])
    return results.PerfRun(df=df, meta={"variant": variant, "date": date,
                                         "model": "food_classifier"},
                           raw={}, metrics=pd.DataFrame())


def test_results_table_keeps_each_variants_newest_run_and_skips_a_corrupt_file(results_dir,
                                                                              capsys):
    for variant, date, throughput in (("a", "2026-11-01T10:00:00+00:00", 10.0),
                                      ("a", "2026-11-02T10:00:00+00:00", 20.0),
                                      ("b", "2026-11-01T12:00:00+00:00", 30.0)):
        results.save_run(_saved_run(variant, date, throughput))
    (results_dir / "20261103T000000Z_broken.json").write_text('{"meta": {"variant": ')
    table = results.table()
    assert sorted(zip(table["variant"], table[results.THROUGHPUT])) == [("a", 20.0), ("b", 30.0)]
    assert "skipped 20261103T000000Z_broken.json" in capsys.readouterr().out
    everything = results.table(latest=False)
    assert sorted(everything[results.THROUGHPUT]) == [10.0, 20.0, 30.0]
    newest, path = results.latest("a")
    assert newest[results.THROUGHPUT].tolist() == [20.0] and path.name.startswith("20261102")
    assert not list(results_dir.glob("*.tmp")) and len(list(results_dir.glob("*.csv"))) == 3


def test_config_text_edited_by_hand_is_diffed_and_served_and_a_typo_costs_nothing(triton,
                                                                                  capsys):
    path = triton.model_repository / "food_classifier" / "config.pbtxt"
    text = configs.to_text(configs.classifier_config(
        dynamic_batching={"preferred_batch_size": [4], "max_queue_delay_microseconds": 20000}))
    try:
        deploy.edit(triton, text)
        out = capsys.readouterr().out
        assert "+  max_queue_delay_microseconds: 20000" in out, out
        served = triton.model_config("food_classifier")
        assert int(served["dynamic_batching"]["max_queue_delay_microseconds"]) == 20000
        assert "text edited in a notebook" in path.read_text()
        before = path.read_text()
        with pytest.raises(configs.ConfigError, match="Did you mean 'preferred_batch_size'"):
            deploy.edit(triton, text.replace("preferred_batch_size", "prefered_batch_size"))
        assert path.read_text() == before and triton.is_ready()
        states = {m["name"]: m.get("state") for m in triton.model_states()}
        assert states["food_classifier"] == "READY"
    finally:
        deploy.restore_baseline(triton)


def test_run_records_when_each_level_ran_and_its_batch_sizes(triton, results_dir):
    """A short run of a batching model: each level's probe and measurement times, on the
    metrics' clock, and the batch sizes Triton counted per level, which add up to the run's."""
    from tritonlab.measuring import plots

    deploy.deploy(triton, configs.classifier_config(
        num_threads=1,  # one thread: steady even while perf_analyzer and others use the cores
        dynamic_batching={"preferred_batch_size": [2], "max_queue_delay_microseconds": 5000}))
    # shortened for test speed: 1 s windows (few requests suffice here), loose tolerance
    opts = perf.PerfSettings(concurrency=[1, 2], measurement_ms=1000, stability_percent=100,
                             max_trials=5, min_requests=5)
    try:
        before = perf.batch_counts(triton, "food_classifier")
        run = perf.run(triton, "food_classifier", "phases", opts)
        after = perf.batch_counts(triton, "food_classifier")
    finally:
        deploy.restore_baseline(triton)
    phases = run.phases
    assert list(phases.columns) == results.PHASE_COLUMNS
    assert list(dict.fromkeys(phases["concurrency"])) == [1, 2]
    assert phases.iloc[0]["phase"] == "probe"  # the first level is probed before measuring
    assert set(phases["phase"]) <= {"probe", "measurement"}
    assert (phases["end (s)"] > phases["start (s)"]).all()
    assert (phases["start (s)"].diff().dropna() >= 0).all()  # one after the other
    assert phases["end (s)"].max() <= run.metrics["time (s)"].max() + 1
    assert run.metrics.attrs["phases"] == phases.to_dict(orient="records")

    assert set(run.batch_counts) == {1, 2}
    assert set(run.batch_counts[1]) == {1}  # one request in flight: never a batch
    assert set(run.batch_counts[2]) <= {1, 2}
    per_size = {size: sum(c.get(size, 0) for c in run.batch_counts.values())
                for size in after}
    assert per_size == {size: n - before.get(size, 0) for size, n in after.items()}

    saved = results.read_run(run.path)
    assert saved.batch_counts == run.batch_counts
    pd.testing.assert_frame_equal(saved.phases, phases, check_dtype=False)
    figure = plots.server_metrics(saved.metrics)  # phases travel with the saved table
    spans = {a.get_gid() for ax in figure.axes for a in ax.patches if a.get_gid()}
    assert {"level c=1", "level c=2", "probe c=1"} <= spans
    assert len(plots.batch_sizes(saved).axes) == 2
    plots.plt.close("all")


def test_a_level_never_stable_is_measured_once_over_a_fixed_count(triton, results_dir, capsys):
    """Windows that must agree within 0 % never do: instead of failing the notebook, the level
    is measured once over a fixed count of requests, marked as such, judged at 100 %."""
    opts = perf.PerfSettings(concurrency=[2], measurement_ms=500, stability_percent=0,
                             max_trials=3, max_attempts=1, min_requests=10,
                             adapt_windows=False)
    run = perf.run(triton, "food_classifier", "never stable", opts, save=False,
                   sample_metrics=False)
    row = run.df.iloc[0]
    assert row["measurement_mode"] == perf.UNSTABLE_MODE
    assert row["stability_percent"] == 100 and row["request count"] >= 30
    assert row[results.THROUGHPUT] > 0
    assert "measuring 30 requests once, without stability windows" in capsys.readouterr().out


def test_quick_once_measures_each_level_once_over_a_count_without_a_probe(
        triton, results_dir, capsys, monkeypatch):
    """`quick_once` (quick mode only): no probe, no windows; one perf_analyzer run per level
    over `window_requests` requests, marked COUNT_MODE and judged at 100 %."""
    monkeypatch.setenv("TRITONLAB_QUICK", "0")
    assert perf.PerfSettings.for_course([1], quick_once=True).stability_windows
    monkeypatch.setenv("TRITONLAB_QUICK", "1")
    opts = perf.PerfSettings.for_course([1, 4], quick_concurrency=[4], quick_once=True)
    assert not opts.stability_windows
    run = perf.run(triton, "food_classifier", "once", opts, save=False, sample_metrics=False)
    row = run.df.iloc[0]
    assert row["measurement_mode"] == perf.COUNT_MODE and row["stability_percent"] == 100
    assert row["request count"] == perf.window_requests(opts, 1, 4) == 10
    assert [p["phase"] for p in run.phases.to_dict("records")] == ["measurement"]
    assert "--request-count 10 " in run.meta["commands"][0]
    assert "--measurement-interval" not in run.meta["commands"][0]
    assert "measuring 10 requests once, without stability windows (quick mode)" in \
        capsys.readouterr().out
