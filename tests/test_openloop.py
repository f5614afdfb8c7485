"""Open-loop load on the real server: perf_analyzer's request-rate mode read from its own export,
and the gRPC driver against a queue policy that refuses on purpose."""

from __future__ import annotations

import subprocess

import pandas as pd
import pytest

from tritonlab.measuring import openloop, perf
from tritonlab.serving import configs, deploy


@pytest.fixture()
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITONLAB_RESULTS_DIR", str(tmp_path / "results"))
    return tmp_path / "results"


def test_the_sweep_uses_only_flags_perf_analyzer_accepts(tmp_path):
    proc = subprocess.run([str(perf.binary()), "--help"], capture_output=True, text=True,
                          env=perf.environment())
    cmd = openloop.sweep_command("127.0.0.1:8000", "m", 12, 100, tmp_path / "a.csv",
                                 tmp_path / "a.json", "in.json")
    for flag in (c for c in cmd if c.startswith("-") and not c[1:].isdigit()):
        assert flag in proc.stdout + proc.stderr, f"perf_analyzer 2.51 has no {flag}"
    assert cmd[cmd.index("--request-rate-range") + 1] == "12:12"
    # perf_analyzer refuses fewer requests than the rate, and fractional rates
    assert openloop.requests_for(250, 0.5, 100) == 250
    assert openloop.rates_around(184.5, [0.3, 1.0, 1.25]) == [55, 184, 231]


def _sweep_row(offered, sent, achieved, p99, queue, compute, requests=300):
    return {openloop.OFFERED: offered, openloop.SENT: sent, openloop.ACHIEVED: achieved,
            openloop.P50_MS: p99 / 2, openloop.P95_MS: p99 * 0.9, openloop.P99_MS: p99,
            "requests": requests, openloop.QUEUE_MS: queue, openloop.COMPUTE_MS: compute}


def test_the_knee_is_where_throughput_falls_behind_or_the_tail_doubles():
    kept_up = pd.DataFrame([_sweep_row(50, 49, 48, 30, 5, 10), _sweep_row(100, 101, 99, 45, 6, 11)])
    assert openloop.knee(kept_up) is None
    assert "no knee up to 100.0 req/s" in openloop.explain(kept_up)
    behind = pd.DataFrame([_sweep_row(50, 49, 48, 30, 5, 10), _sweep_row(200, 198, 150, 55, 9, 12),
                           _sweep_row(250, 251, 152, 900, 300, 40)])
    found = openloop.knee(behind)
    assert found["offered"] == 200 and "150.0 infer/s came back for 198.0 req/s sent" in \
        found["why"]
    text = openloop.explain(behind)
    assert "queue time grew 60x (5.0 -> 300.0 ms)" in text
    slow = pd.DataFrame([_sweep_row(50, 49, 48, 30, 5, 10), _sweep_row(100, 99, 97, 70, 20, 12)])
    assert openloop.knee(slow)["offered"] == 100  # p99 2.3x the lightest load's


@pytest.mark.server
def test_an_open_loop_sweep_is_read_from_perf_analyzers_export(triton, results_dir):
    df = openloop.sweep(triton, "food_classifier", "test sweep", [4, 8], seconds=1,
                        min_requests=12)
    assert list(df[openloop.OFFERED]) == [4, 8]
    assert (df["answered"] == df["requests"]).all() and (df["requests"] >= 12).all()
    assert (df[openloop.P99_MS] >= df[openloop.P50_MS]).all() and (df[openloop.P50_MS] > 0).all()
    # well below capacity, what comes back keeps up with what was sent
    assert (df[openloop.ACHIEVED] > 0.5 * df[openloop.SENT]).all()
    assert (df[openloop.COMPUTE_MS] > 0).all()
    assert len(list((results_dir / "open_loop").glob("*_sweep_test-sweep.json"))) == 1


TIMEOUT_MS = 100
#: How much later than its queue timeout a refusal may come: Triton checks timeouts when it
#: schedules (server#7512), so one batch's execution (a batch of 8 here: a few hundred ms on 2
#: cores) plus the client's own delay on shared cores.
SLACK_MS = 1000


@pytest.mark.server
def test_an_overloaded_server_with_a_queue_policy_refuses_at_once(triton, images):
    """Far above capacity, with at most 2 requests queued: the rest are refused, none waits
    past the timeout plus SLACK_MS, and every accepted request is answered correctly."""
    cfg = configs.classifier_config(dynamic_batching={"preferred_batch_size": [4],
                                                      "max_queue_delay_microseconds": 1000})
    configs.set_queue_policy(cfg, max_queue_size=2, timeout_microseconds=TIMEOUT_MS * 1000)
    try:
        deploy.deploy(triton, cfg)
        runs = openloop.drive(triton, "food_classifier", rate=200, requests=200, images=images)
    finally:
        deploy.restore_baseline(triton)
    summary = openloop.overload_summary(runs, "policy")
    assert summary["refused"] > 0 and summary["answered"] > 0 and summary["failed"] == 0
    assert summary["answered"] + summary["refused"] == 200
    assert summary["slowest refusal (ms)"] <= TIMEOUT_MS + SLACK_MS
    assert set(runs["status"]) == {"ok", "refused"}


def test_a_queue_policy_needs_the_dynamic_batcher():
    with pytest.raises(configs.ConfigError, match="dynamic batching first"):
        configs.set_queue_policy(configs.classifier_config(), 4, 1000)
    cfg = configs.fastest_classifier_config()
    configs.set_queue_policy(cfg, 4, 50_000, priority_levels=2)
    text = configs.to_text(cfg)
    assert "max_queue_size: 4" in text and "default_priority_level: 2" in text
    assert configs.parse(text) == cfg  # Triton's own schema reads it back as written


def test_the_overload_words_come_from_the_requests():
    """The growth of waiting is measured (first against last tenth sent), not asserted."""
    sent = [i / 100 for i in range(100)]
    growing = pd.DataFrame({"sent (s)": sent, "latency (ms)": [10.0 + 5 * i for i in range(100)],
                            "status": "ok"})
    bounded = pd.DataFrame({"sent (s)": sent, "latency (ms)": [50.0] * 60 + [2.0] * 40,
                            "status": ["ok"] * 60 + ["refused"] * 40})
    summary = pd.DataFrame([openloop.overload_summary(growing, "plain"),
                            openloop.overload_summary(bounded, "policy")])
    row = summary.set_index("config").loc["plain"]
    assert (row["first tenth p50 (ms)"], row["last tenth p50 (ms)"]) == (32.5, 482.5)
    assert row[openloop.SENT] == pytest.approx(100.0)
    text = openloop.explain_overload(summary, "plain", "policy", timeout_ms=200)
    assert "median latency was 32 ms for the first tenth sent and 482 ms for the last" in text
    assert "60 answered (p99 50 ms), 40 refused (40%)" in text
    assert "within the 200 ms queue timeout" in text
