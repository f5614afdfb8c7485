"""`plots` decides, from the numbers, how a figure is drawn so it reads in quick mode: legends
outside the axes, log axes where one value would flatten the rest, labels that do not overlap,
a panel per concurrency level for batch sizes, a run's phases and each GPU on the metrics."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from tritonlab.measuring import metrics, plots, results  # noqa: E402

LONG_NAMES = ["baseline", "dynamic batching", "2 instances, all threads each",
              "ONNX Runtime + dynamic batching", "ONNX Runtime, 2 instances + batching",
              "the 2-GPU config, as CPU instances"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plots.plt.close("all")


def _table(throughputs: dict[str, tuple[float, float]], levels=(1, 8)) -> pd.DataFrame:
    """Rows as perf.run writes them: latency grows as throughput falls (Little's law)."""
    rows = []
    for variant, values in throughputs.items():
        for level, rate in zip(levels, values):
            latency_us = level / rate * 1e6
            rows.append({"variant": variant, "concurrency": level, results.THROUGHPUT: rate,
                         results.P50: latency_us, results.P95: 1.1 * latency_us,
                         results.P99: 1.2 * latency_us,
                         "server queue (us)": 0.6 * latency_us,
                         "server compute input (us)": 100.0,
                         "server compute infer (us)": 0.35 * latency_us,
                         "server compute output (us)": 100.0, "client send (us)": 50.0,
                         "network + server send/recv (us)": 80.0, "client recv (us)": 20.0})
    return pd.DataFrame(rows)


CLOSE = _table({name: (60.0 + 10 * i, 100.0 + 20 * i) for i, name in enumerate(LONG_NAMES)})
#: One variant at 1.1 infer/s at concurrency 8 (notebook 04's oversubscribed instances).
OUTLIER = _table({**{name: (60.0 + 10 * i, 100.0 + 20 * i)
                     for i, name in enumerate(LONG_NAMES[:-1])},
                  LONG_NAMES[-1]: (40.0, 1.1)})


def _boxes(fig, artists):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [a.get_window_extent(renderer) for a in artists]


def _legend_outside_every_axes(fig):
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 1, "one legend per figure"
    [legend] = _boxes(fig, legends)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    return all(not legend.overlaps(box) for box in _boxes(fig, shown))


def _tick_labels_apart(fig):
    for ax in fig.axes:
        labels = [t for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
        boxes = sorted(_boxes(fig, labels), key=lambda b: b.x0)
        if any(a.x1 > b.x0 for a, b in zip(boxes, boxes[1:])):
            return False
    return True


@pytest.mark.parametrize("values,log", [
    ([10, 300], True),             # 30x
    ([10, 150], False),            # 15x
    ([0, 5, 50], False),           # zeros are left out: 10x
    ([0, 1, 100], True),
    ([float("nan"), 2, 100], True),
    ([7], False),
    ([], False),
])
def test_log_scale_only_when_the_largest_is_over_20_times_the_smallest_positive(values, log):
    assert plots.wants_log(values) is log


def test_long_names_wrap_at_their_joints_and_keep_every_word():
    assert plots.wrap("ONNX Runtime, 2 instances + batching") == \
        "ONNX Runtime,\n2 instances + batching"
    assert plots.wrap("ONNX Runtime + dynamic batching") == "ONNX Runtime\n+ dynamic batching"
    assert plots.wrap("baseline") == "baseline"
    for name in LONG_NAMES + ["a name with no joints at all that runs on and on and on"]:
        wrapped = plots.wrap(name)
        assert wrapped.replace("\n", " ") == name
        assert all(len(line) <= plots.WRAP + 4 for line in wrapped.splitlines())


def test_throughput_legend_outside_and_log_only_for_an_outlier():
    fig = plots.throughput(CLOSE)
    ax = fig.axes[0]
    assert _legend_outside_every_axes(fig)
    assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0
    assert "ONNX Runtime,\n2 instances + batching" in [
        t.get_text() for t in ax.get_legend().get_texts()]
    fig = plots.throughput(OUTLIER)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and "log scale" in ax.get_ylabel()
    assert _legend_outside_every_axes(fig)


def test_latency_one_panel_per_percentile_for_several_variants():
    fig = plots.latency(CLOSE)
    assert [ax.get_title() for ax in fig.axes] == ["p50 latency", "p95 latency", "p99 latency"]
    assert fig.axes[0].get_shared_y_axes().joined(fig.axes[0], fig.axes[2])
    assert _legend_outside_every_axes(fig)
    assert fig.axes[0].get_yscale() == "linear"
    fig = plots.latency(OUTLIER)  # 8 / 1.1 s against about 17 ms
    assert all(ax.get_yscale() == "log" for ax in fig.axes)
    assert "log scale" in fig.axes[0].get_ylabel()
    single = plots.latency(CLOSE[CLOSE["variant"] == "baseline"])
    assert len(single.axes) == 1 and _legend_outside_every_axes(single)


def test_breakdown_one_panel_per_variant_shared_scale_unless_one_flattens_the_rest():
    three = CLOSE[CLOSE["variant"].isin(LONG_NAMES[:3])]
    fig = plots.breakdown(three)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title().replace("\n", " ") for ax in shown] == LONG_NAMES[:3]
    assert shown[0].get_shared_y_axes().joined(shown[0], shown[2])
    assert _legend_outside_every_axes(fig) and _tick_labels_apart(fig)
    fig = plots.breakdown(OUTLIER)  # the 2-GPU config at 1.1 infer/s
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == len(LONG_NAMES)
    assert not shown[0].get_shared_y_axes().joined(shown[0], shown[1])
    assert "own scale" in shown[0].get_ylabel()
    assert _legend_outside_every_axes(fig) and _tick_labels_apart(fig)


def test_tradeoff_marks_levels_by_marker_not_by_overlapping_text():
    fig = plots.throughput_vs_latency(OUTLIER)
    ax = fig.axes[0]
    assert not ax.texts
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "concurrency" in labels and "1" in labels and "8" in labels
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert _legend_outside_every_axes(fig)


def _run(batch_counts=None, phases=None, frame=None) -> results.PerfRun:
    return results.PerfRun(df=CLOSE.head(2), meta={"variant": "baseline"}, raw={},
                           metrics=frame if frame is not None else pd.DataFrame(),
                           phases=pd.DataFrame(phases or [], columns=results.PHASE_COLUMNS),
                           batch_counts=batch_counts or {})


def test_batch_sizes_one_panel_per_concurrency_level():
    run = _run({1: {1: 300}, 8: {1: 3, 4: 10, 8: 40}, 16: {1: 2, 8: 5, 16: 90}})
    fig = plots.batch_sizes(run)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title().split(":")[0] for ax in shown] == \
        ["concurrency 1", "concurrency 8", "concurrency 16"]
    assert "97 executions" in shown[2].get_title()
    assert [ax.get_yscale() for ax in shown] == ["linear", "linear", "log"]  # 90 against 2
    assert [len(ax.patches) for ax in shown] == [1, 3, 3]
    legacy = plots.batch_sizes({"during the perf run": {1: 10, 4: 3}})
    assert [ax.get_title().split(":")[0] for ax in legacy.axes] == ["during the perf run"]
    with pytest.raises(ValueError, match="no batch counts per concurrency level"):
        plots.batch_sizes(_run())


PHASES = [{"concurrency": 1, "phase": "probe", "attempt": 1, "start (s)": 0.0, "end (s)": 1.0},
          {"concurrency": 1, "phase": "measurement", "attempt": 1, "start (s)": 1.0,
           "end (s)": 5.0},
          {"concurrency": 8, "phase": "measurement", "attempt": 1, "start (s)": 5.0,
           "end (s)": 8.0},
          {"concurrency": 8, "phase": "measurement", "attempt": 2, "start (s)": 8.0,
           "end (s)": 12.0}]


def _samples(gpus: dict[str, float], seconds: int = 12) -> pd.DataFrame:
    """Prometheus scrapes as MetricsSampler takes them, one per second, turned into rates: 10
    requests a second, 12 ms of compute each, queued 0.02 ms each for 5 s, then 80 ms."""
    samples = []
    for t in range(seconds + 1):
        queued_us = 200 * min(t, 5) + 800_000 * max(t - 5, 0)
        text = "\n".join(
            [f'nv_inference_request_success{{model="m",version="1"}} {10 * t}',
             f'nv_inference_queue_duration_us{{model="m",version="1"}} {queued_us}',
             f'nv_inference_compute_infer_duration_us{{model="m",version="1"}} {t * 120000}',
             f'nv_inference_count{{model="m",version="1"}} {10 * t}',
             f'nv_inference_exec_count{{model="m",version="1"}} {10 * t}',
             "nv_cpu_utilization 0.5"]
            + [f'nv_gpu_utilization{{gpu_uuid="{uuid}"}} {u}' for uuid, u in gpus.items()]) + "\n"
        samples.append(dict(metrics.snapshot(metrics.parse(text), "m"), **{"time (s)": t}))
    return metrics.to_frame(samples)


def _spans(fig) -> set[str]:
    return {p.get_gid() for ax in fig.axes for p in ax.patches if p.get_gid()}


def test_server_metrics_marks_each_level_its_probe_and_a_retried_measurement():
    frame = _samples({})
    fig = plots.server_metrics(_run(phases=PHASES, frame=frame))
    assert _spans(fig) == {"level c=1", "level c=8", "probe c=1", "retried c=8"}
    assert fig.axes[1].get_yscale() == "log"  # 0.02 ms queued, then 80 ms
    assert {t.get_text() for t in fig.axes[0].texts} == {"c=1", "c=8"}
    assert _legend_outside_every_axes(fig)
    frame.attrs["phases"] = PHASES  # as perf.run leaves it on run.metrics
    assert _spans(plots.server_metrics(frame)) == _spans(fig)
    assert _spans(plots.server_metrics(_samples({}))) == set()  # saved before phases existed


def test_server_metrics_draws_one_line_per_gpu():
    frame = _samples({"GPU-1a2b3c4d-0000-1111-2222-333344445555": 0.8,
                      "GPU-9f8e7d6c-0000-1111-2222-333344445555": 0.2})
    assert metrics.gpu_columns(frame) == ["gpu utilization (%) GPU-1a2b3c4d",
                                          "gpu utilization (%) GPU-9f8e7d6c"]
    assert frame["gpu utilization (%)"].iloc[0] == pytest.approx(50)  # the mean is kept
    assert frame["gpu utilization (%) GPU-1a2b3c4d"].iloc[0] == pytest.approx(80)
    fig = plots.server_metrics(frame)
    lines = {line.get_label() for line in fig.axes[0].get_lines()}
    assert {"CPU", "GPU-1a2b3c4d", "GPU-9f8e7d6c"} <= lines and "GPU" not in lines
    without = plots.server_metrics(_samples({}))
    assert {line.get_label() for line in without.axes[0].get_lines()} & {"GPU"} == set()


def test_cold_start_log_for_a_slow_first_request_and_names_apart():
    rows = [{"variant": v, "load": load, "request": r, "load (s)": 1.5,
             "latency (ms)": 900.0 if (r == 1 and v.startswith("cold")) else 22.0}
            for v in ("cold (no model_warmup)", "warm (model_warmup)") for load in range(3)
            for r in range(1, 6)]
    fig = plots.cold_start(pd.DataFrame(rows))
    assert fig.axes[0].get_yscale() == "log" and "log scale" in fig.axes[0].get_ylabel()
    assert _legend_outside_every_axes(fig) and _tick_labels_apart(fig)


def test_saved_run_reads_back_with_phases_and_batch_counts(tmp_path):
    run = _run({1: {1: 300}, 8: {4: 10, 8: 40}}, PHASES, _samples({}))
    path = tmp_path / "run.json"
    path.write_text(results.to_json(run))
    back = results.read_run(path)
    assert back.batch_counts == run.batch_counts and back.path == path
    pd.testing.assert_frame_equal(back.phases, run.phases, check_dtype=False)
    assert back.metrics.attrs["phases"] == back.phases.to_dict(orient="records")
    old = {"meta": {"variant": "old"}, "rows": CLOSE.head(2).to_dict(orient="records"),
           "steps": [], "metrics": [], "raw": {"1": "output"}}  # saved before both existed
    path.write_text(json.dumps(old))
    back = results.read_run(path)
    assert back.phases.empty and back.batch_counts == {} and back.raw == {1: "output"}
    fig = plots.server_metrics(back)
    assert fig is not None
    spans = [p.get_gid() for ax in fig.axes for p in ax.patches if p.get_gid()]
    assert not spans  # no phases recorded, none drawn


def test_replicas_one_column_per_protocol_every_bar_labelled_inside_the_axes():
    from tritonlab.measuring import replicas as measured

    rows = [{"setup": setup, "protocol": protocol, "concurrency": 8,
             results.THROUGHPUT: thr, "p95 latency (ms)": p95}
            for protocol in ("http", "grpc")
            for setup, thr, p95 in ((measured.ONE, 200.0, 46.5),
                                    (measured.ONE_BEHIND, 185.0, 54.7),
                                    (measured.TWO, 172.0, 79.9))]
    fig = plots.replicas(pd.DataFrame(rows))
    assert [ax.get_title() for ax in fig.axes[:2]] == ["HTTP", "GRPC"]
    assert _legend_outside_every_axes(fig)
    for ax in fig.axes:
        labels = [t for c in ax.containers for t in c.datavalues]
        assert len(labels) == 3
        assert max(labels) < ax.get_ylim()[1] / 1.1  # the tallest bar's label fits above it
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == [
        measured.ONE, measured.ONE_BEHIND, measured.TWO]


def test_replicas_needed_steps_up_with_the_traffic():
    from tritonlab.measuring import capacity

    point = capacity.OperatingPoint("food_classifier", "fastest", 8, 120.0, 45.0, 3.0, 2000,
                                    50.0, "2026-12-04")
    fig = plots.replicas_needed({"classify": point, "caption": None}, 0.7, (1_000, 10_000))
    ax = fig.axes[0]
    (line,) = ax.get_lines()[:1]
    counts = list(line.get_ydata())
    assert counts[0] == 1 and counts == sorted(counts)
    # 12,000 uploads/min = 200 req/s over 120 x 0.7 = 84 per replica: 3 replicas at the end
    assert counts[-1] == 3
    assert "70%" in ax.get_title()
