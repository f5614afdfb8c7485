"""Two Triton replicas behind nginx: real servers, the packaged nginx, real perf_analyzer.

The tests that start servers share one pair of replicas (the fastest classifier variant) and one
nginx in front of them; `compare` starts its own, as a notebook would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pandas as pd
import psutil
import pytest

from tritonlab import settings
from tritonlab.assets import samples
from tritonlab.measuring import perf
from tritonlab.measuring import replicas as measured
from tritonlab.measuring.results import REQUESTS, THROUGHPUT
from tritonlab.serving import PortInUseError, clients, configs, deploy
from tritonlab.serving import replicas as serving
from tritonlab.serving.replicas import LoadBalancer, Replicas

from .conftest import make_repository, tritonservers_in


def starts_servers(test):
    """Mark a test that starts Triton replicas (and nginx) as the suite marks such tests."""
    return pytest.mark.server(pytest.mark.slow(test))


def nginx_in(folder) -> list[psutil.Process]:
    """Running nginx master processes started on `folder` (their command line names it)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "nginx" in cmd and str(folder) in cmd and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """The processes of `procs` still running (a zombie has ended)."""
    running = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                running.append(proc)
        except psutil.NoSuchProcess:
            pass
    return running


@pytest.fixture(scope="module")
def classifier_repository(tmp_path_factory, weights_ready):
    """A private copy of food_classifier alone, with its ONNX export (the fastest variant)."""
    repo = make_repository(tmp_path_factory.mktemp("replicas_repository"),
                           names=("food_classifier",))
    deploy.prepare_variant("fastest", repo)
    return repo


@pytest.fixture(scope="module")
def balancer(classifier_repository, tmp_path_factory):
    """Two replicas serving the fastest classifier, behind nginx (round robin)."""
    state = tmp_path_factory.mktemp("replicas_state")
    replicas = Replicas(2, classifier_repository, state / "replicas", models=())
    replicas.start()
    lb = LoadBalancer(replicas, state / "nginx")
    try:
        replicas.serve(configs.fastest_classifier_config())
        lb.start()
        yield lb
    finally:
        lb.stop()
        replicas.stop()
    assert not nginx_in(lb.folder), "an nginx outlived stop()"
    assert not tritonservers_in(replicas.state_dir), "a tritonserver outlived stop()"


@pytest.fixture(scope="module")
def perf_input(tmp_path_factory):
    return samples.write_perf_inputs(tmp_path_factory.mktemp("perf"))["raw"]


# --- without servers ------------------------------------------------------------------------------
def test_each_replica_gets_its_share_of_the_threads(tmp_path):
    alone = configs.classifier_config(instances=1, cpu_share=1.0)
    assert serving.share_cores(alone, 2).parameters["cpu_share"].string_value == "0.5"
    two_threads = configs.classifier_config(instances=1, num_threads=2)
    assert serving.share_cores(two_threads, 2).parameters["num_threads"].string_value == "1"
    fastest = configs.fastest_classifier_config()  # 1 thread per instance: the least there is
    assert serving.share_cores(fastest, 2).parameters["num_threads"].string_value == "1"
    assert fastest.parameters["num_threads"].string_value == "1"  # the original is untouched
    with pytest.raises(ValueError):
        serving.share_cores(fastest, 0)
    two = Replicas(2, settings.MODEL_REPOSITORY, tmp_path)  # not started: plan() reads configs
    assert two.plan(alone, cores=2) == ("2 replica(s) x 1 instance(s) x 1 thread(s) = 2 threads "
                                        "on 2 cores")
    assert "= 4 threads on 2 cores: more threads than cores" in two.plan(fastest, cores=2)


def test_the_access_log_says_which_replica_answered():
    line = ('2026-12-04T13:43:19+00:00 listener=8000 "POST /v2/models/food_classifier/infer '
            'HTTP/1.1" 200 upstream="127.0.0.1:9000" upstream_status="200" request_time=0.019')
    entry = serving.parse_access_line(line)
    assert entry["upstream"] == "127.0.0.1:9000" and entry["status"] == 200
    assert entry["uri"] == "/v2/models/food_classifier/infer" and entry["listener"] == 8000
    retried = line.replace('"127.0.0.1:9000"', '"127.0.0.1:9000, 127.0.0.1:9003"')
    assert serving.parse_access_line(retried)["upstream"] == "127.0.0.1:9003"  # the last one
    nobody = line.replace('"127.0.0.1:9000"', '"-"')
    assert serving.parse_access_line(nobody)["upstream"] == ""
    assert serving.parse_access_line("not a line of ours") is None


@pytest.mark.parametrize("method", serving.METHODS)
def test_the_written_config_passes_nginx_t(tmp_path, method):
    replicas = Replicas(2, tmp_path, tmp_path / "replicas")
    lb = LoadBalancer(replicas, tmp_path / "nginx", method=method)
    lb.write_config()
    lb.check_config()  # raises if nginx refuses it
    text = lb.config_text()
    assert "worker_processes 1;" in text and "daemon off;" in text
    assert f"listen {lb.grpc_url} http2;" in text and "grpc_pass grpc://triton_grpc;" in text
    for server in replicas:
        assert f"server {server.http_url};" in text and f"server {server.grpc_url};" in text
    assert ("least_conn;" in text) == (method == "least_conn")
    assert "$upstream_addr" in text
    with pytest.raises(ValueError, match="least_conn"):
        LoadBalancer(replicas, tmp_path / "x", method="fastest")


def test_a_missing_nginx_names_the_fix(tmp_path, monkeypatch):
    replicas = Replicas(2, tmp_path, tmp_path / "replicas")
    lb = LoadBalancer(replicas, tmp_path / "nginx", binary=tmp_path / "no-nginx")
    with pytest.raises(serving.NginxMissing, match="make system-deps"):
        lb.start()
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(serving, "NGINX_PLACES", ())
    with pytest.raises(serving.NginxMissing, match="make system-deps"):
        LoadBalancer(replicas, tmp_path / "nginx").start()
    with pytest.raises(serving.NginxMissing):  # before it measures anything
        measured.compare(tmp_path, state_dir=tmp_path / "state")
    assert not (tmp_path / "state").exists()


def test_a_broken_config_is_refused_with_nginxs_own_message(tmp_path, monkeypatch):
    replicas = Replicas(2, tmp_path, tmp_path / "replicas")
    lb = LoadBalancer(replicas, tmp_path / "nginx")
    broken = lb.config_text().replace("keepalive ", "keep_alive ", 1)
    monkeypatch.setattr(lb, "config_text", lambda: broken)
    with pytest.raises(serving.NginxConfigError, match='unknown directive "keep_alive"'):
        lb.start()
    assert not lb.is_running() and not nginx_in(lb.folder)


def test_the_verdict_comes_from_the_numbers():
    def table(two: float) -> pd.DataFrame:
        rows = [{"setup": setup, "replicas": n, "protocol": "http", "concurrency": 8,
                 THROUGHPUT: thr, "p50 latency (ms)": 40.0, "p95 latency (ms)": 50.0,
                 "p99 latency (ms)": 60.0, "mean batch size": 1.0}
                for setup, n, thr in ((measured.ONE, 1, 100.0), (measured.TWO, 2, two))]
        return pd.DataFrame(rows)

    assert "1.05x: no clear change" in measured.explain(table(105.0))
    assert "1.50x: more throughput" in measured.explain(table(150.0))
    assert "0.50x: less throughput" in measured.explain(table(50.0))
    assert f"{os.cpu_count()} cores" in measured.explain(table(100.0))


def test_a_level_on_too_few_requests_carries_no_verdict():
    rows = [{"setup": setup, "replicas": n, "protocol": "http", "concurrency": 8,
             THROUGHPUT: thr, "p50 latency (ms)": 40.0, "p95 latency (ms)": 50.0,
             "p99 latency (ms)": 60.0, "mean batch size": 1.0, REQUESTS: count}
            for setup, n, thr, count in ((measured.ONE, 1, 100.0, 400),
                                         (measured.TWO, 2, 150.0, 12))]
    text = measured.explain(pd.DataFrame(rows))
    assert "1.50x: too few requests to judge" in text
    assert "more throughput" not in text and text.startswith("No level was measured")
    rows[1][REQUESTS] = 600
    assert "1.50x: more throughput" in measured.explain(pd.DataFrame(rows))


def test_the_hop_through_nginx_is_judged_against_one_replica_alone():
    rows = [{"setup": setup, "replicas": n, "protocol": "grpc", "concurrency": 4,
             THROUGHPUT: thr, "p50 latency (ms)": 20.0, "p95 latency (ms)": p95,
             "p99 latency (ms)": 40.0, "mean batch size": 2.0, REQUESTS: 900}
            for setup, n, thr, p95 in ((measured.ONE, 1, 100.0, 30.0),
                                       (measured.ONE_BEHIND, 1, 80.0, 36.5),
                                       (measured.TWO, 2, 101.0, 31.0))]
    text = measured.explain(pd.DataFrame(rows))
    assert ("The hop alone (one replica behind nginx): 80 infer/s (0.80x: less throughput), "
            "p95 36.5 ms") in text
    assert "GRPC at concurrency 4: 101 infer/s" in text and "1.01x: no clear change" in text


def test_a_change_within_what_the_windows_allowed_is_no_clear_change():
    """Quick mode's windows agree within 30 %: 1.12x there is no verdict, while the same
    ratio from windows that agreed within 10 % is one."""
    def table(stability: int) -> pd.DataFrame:
        return pd.DataFrame([
            {"setup": setup, "replicas": n, "protocol": "http", "concurrency": 8,
             THROUGHPUT: thr, "p50 latency (ms)": 40.0, "p95 latency (ms)": 50.0,
             "p99 latency (ms)": 60.0, "mean batch size": 2.0, REQUESTS: 1000,
             "stability_percent": stability}
            for setup, n, thr in ((measured.ONE, 1, 162.0), (measured.ONE_BEHIND, 1, 184.0),
                                  (measured.TWO, 2, 181.0))])

    quick = measured.explain(table(30))
    assert "(1.12x: no clear change)" in quick and "(1.14x: no clear change)" in quick
    assert "A change within 30% is no clear change here" in quick
    full = measured.explain(table(10))
    assert "(1.12x: more throughput)" in full and "within 30%" not in full


def test_an_unknown_setup_is_refused_before_anything_starts(tmp_path):
    with pytest.raises(ValueError, match="choose from"):
        measured.compare(tmp_path, setups=("3 replicas",), state_dir=tmp_path / "state")
    assert not (tmp_path / "state").exists()


# --- real replicas, real nginx --------------------------------------------------------------------
@starts_servers
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_classify_request_through_nginx_succeeds(balancer, images, protocol):
    url = balancer.http_url if protocol == "http" else balancer.grpc_url
    found = clients.classify(url, images[:2], protocol=protocol)
    assert len(found) == 2 and all(0 < p.probability <= 1 for p in found)
    assert balancer.is_ready() and balancer.version() == "2.51.0"


@starts_servers
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_requests_are_spread_over_both_replicas_and_both_counts_agree(balancer, images,
                                                                      protocol):
    url = balancer.http_url if protocol == "http" else balancer.grpc_url
    with measured.split(balancer, "food_classifier") as served:
        for _ in range(4):
            clients.classify(url, images[:1], protocol=protocol)
    table = served.table
    assert list(table["replica"]) == [0, 1]
    assert table["requests (nginx log)"].sum() == 4
    assert (table["requests (nginx log)"] > 0).all(), f"one replica got every request:\n{table}"
    assert served.agree, table
    assert "The two counts agree" in measured.explain_split(table)


@starts_servers
def test_perf_analyzer_measures_through_nginx(balancer, perf_input):
    opts = perf.PerfSettings(concurrency=[2], measurement_ms=1000, max_trials=5,
                             protocol="grpc", input_data=str(perf_input))
    with measured.split(balancer, "food_classifier") as served:
        run = perf.run(balancer, "food_classifier", "through nginx", opts, save=False)
    assert run.df[THROUGHPUT].iloc[0] > 0
    assert f"-u {balancer.grpc_url} -i grpc" in run.meta["commands"][0]
    # the executions per batch size are the replicas' together, as their metrics count them
    executed = sum(size * n for size, n in run.batch_counts[2].items())
    assert executed == served.table["requests (Triton metrics)"].sum()
    assert served.agree and (served.table["requests (nginx log)"] > 0).all()


@starts_servers
def test_stopping_leaves_no_nginx_behind(balancer, tmp_path):
    second = LoadBalancer(balancer.replicas, tmp_path / "nginx")
    second.start()
    procs = second.processes()
    assert len(procs) == 2  # the master and its one worker
    assert nginx_in(second.folder)
    second.stop()
    assert not alive(procs) and not nginx_in(second.folder)
    assert not second.is_running() and not second.pid_file.exists()


CHILD = textwrap.dedent("""
    import sys, time
    from tritonlab.serving.replicas import LoadBalancer, Replicas
    from tritonlab.settings import TritonAddress
    replicas = Replicas(2, sys.argv[1], sys.argv[2])
    for server, url in zip(replicas, sys.argv[4:]):  # the replicas the test process runs
        server.address = TritonAddress.parse(url)
    balancer = LoadBalancer(replicas, sys.argv[3])
    balancer.start()
    print("READY", " ".join(str(p.pid) for p in balancer.processes()), flush=True)
    time.sleep(600)
""")


@starts_servers
def test_nginx_dies_with_the_process_that_started_it(balancer, tmp_path):
    """A notebook kernel killed or restarted must not leave its nginx behind."""
    folder = tmp_path / "nginx"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(balancer.model_repository),
                              str(tmp_path / "unused"), str(folder),
                              *[s.address.url for s in balancer.replicas]],
                             stdout=subprocess.PIPE, text=True)
    try:
        line = ""
        for line in child.stdout:  # the course's log lines come first
            if line.startswith("READY"):
                break
        assert line.startswith("READY"), line
        procs = [psutil.Process(int(pid)) for pid in line.split()[1:]]
        assert len(procs) == 2 and nginx_in(folder)
        child.send_signal(signal.SIGKILL)  # as a kernel restart does
        child.wait(10)
        psutil.wait_procs(procs, timeout=10)
        assert not alive(procs) and not nginx_in(folder)
    finally:
        child.kill()
        for master in nginx_in(folder):  # only when the test failed: leave nothing behind
            master.terminate()


@starts_servers
def test_replicas_are_all_stopped_when_one_cannot_start(classifier_repository, tmp_path):
    replicas = Replicas(2, classifier_repository, tmp_path / "replicas", models=())
    with socket.socket() as taken:  # replica 1's HTTP port, held by someone else
        taken.bind(("127.0.0.1", replicas[1].address.http))
        taken.listen()
        with pytest.raises(PortInUseError, match="replica 1"):
            replicas.start()
    assert not tritonservers_in(replicas.state_dir)  # replica 0 had started: it was stopped


@starts_servers
def test_a_quick_compare_measures_both_setups(classifier_repository, perf_input, tmp_path,
                                              monkeypatch):
    monkeypatch.setenv("TRITONLAB_QUICK", "1")
    monkeypatch.setenv("TRITONLAB_RESULTS_DIR", str(tmp_path / "results"))
    # one short level, over HTTP only: shortened for test speed
    opts = perf.PerfSettings.for_course([4, 8], quick_concurrency=[4], input_data=str(perf_input))
    df = measured.compare(classifier_repository, opts=opts, protocols=("http",),
                          state_dir=tmp_path / "state", setups=(measured.ONE, measured.TWO))
    assert list(df.columns) == measured.COLUMNS
    assert list(df["setup"]) == [measured.ONE, measured.TWO]
    assert list(df["concurrency"]) == [4, 4] and (df[THROUGHPUT] > 0).all()
    assert (df["p95 latency (ms)"] >= df["p50 latency (ms)"]).all()
    assert (df["mean batch size"] >= 1).all()
    table = df.attrs["splits"]["http"]
    assert (table["requests (nginx log)"] > 0).all()
    assert (table["requests (nginx log)"] == table["requests (Triton metrics)"]).all()
    saved = json.loads(df.attrs["path"].read_text())
    assert saved["quick"] is True and len(saved["rows"]) == 2
    assert saved["nginx"].startswith("nginx/")
    assert "x the throughput of one" in measured.explain(df)
    assert not tritonservers_in(tmp_path / "state") and not nginx_in(tmp_path / "state")

