"""The server lifecycle against the real tritonserver: reloads, refusals, and no orphans."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest
import requests
from google.protobuf import json_format

from tritonlab.serving import ModelLoadError, PortInUseError, ServerNotReady, configs
from tritonlab.serving.embedded import EmbeddedTriton
from tritonlab.serving.server import GPU_NOISE
from tritonlab.settings import TritonAddress

from .conftest import add_slow_model, free_ports, make_repository, tritonservers_in

pytestmark = pytest.mark.server


def served_config(server, name="food_classifier") -> dict:
    return requests.get(f"http://{server.http_url}/v2/models/{name}/config", timeout=10).json()


def test_reload_applies_a_changed_config_and_restores_the_file(triton):
    seconds = triton.reload_model("food_classifier",
                                  config=configs.classifier_config(max_batch_size=8))
    assert seconds > 0
    assert served_config(triton)["max_batch_size"] == 8
    triton.reload_model("food_classifier")
    assert served_config(triton)["max_batch_size"] == 16
    assert triton.is_ready()


def test_config_triton_refuses_surfaces_its_message(triton):
    cfg = configs.classifier_config()
    cfg.dynamic_batching.preferred_batch_size.append(64)  # > max_batch_size: Triton refuses
    with pytest.raises(ModelLoadError) as err:
        triton.reload_model("food_classifier", config=json_format.MessageToJson(cfg))
    assert "preferred size must be <= max batch size" in str(err.value)
    triton.reload_model("food_classifier")
    assert triton.is_ready()


def test_logs_hide_gpu_noise_and_filter_by_model(triton):
    noisy = [ln for ln in triton.log_text().splitlines() if GPU_NOISE.search(ln)]
    if not noisy:
        pytest.skip("this machine's Triton log has no GPU warnings to hide (a GPU is present)")
    assert noisy[0] in triton.logs(10_000, gpu_noise=True)
    assert not [ln for ln in triton.logs(10_000).splitlines() if GPU_NOISE.search(ln)]
    model_lines = triton.logs(500, model="food_classifier").splitlines()
    assert model_lines and all("food_classifier" in ln for ln in model_lines)


def test_port_in_use_names_the_process(tmp_path, repository):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        grpc, metrics = free_ports(2)
        address = TritonAddress("127.0.0.1", port, grpc, metrics)
        server = EmbeddedTriton(repository, address=address, state_dir=tmp_path)
        with pytest.raises(PortInUseError, match=f"Port {port} .*pid {os.getpid()}"):
            server.start()
    assert not tritonservers_in(tmp_path)


def test_stale_pid_file_is_ignored_and_removed(tmp_path, repository):
    server = EmbeddedTriton(repository, state_dir=tmp_path)
    # a pid that is alive but not a tritonserver (this test process) must never be killed
    server.pid_file.write_text(json.dumps({"pid": os.getpid()}))
    assert server.recorded() is None
    assert server._stop_recorded(timeout=1) is False
    assert not server.pid_file.exists()


def test_model_whose_initialize_raises(tmp_path, repository):
    repo = make_repository(tmp_path / "repo")
    broken = repo / "food_classifier" / "1" / "model.py"
    code = broken.read_text()
    line = "        params = backend_helpers.config_parameters(args)\n"
    assert line in code, "initialize() changed: update this test"
    broken.write_text(code.replace(line, '        raise RuntimeError("weights are on holiday")\n'))
    server = EmbeddedTriton(repo, address=TritonAddress.free(), state_dir=tmp_path / "state")
    try:
        with pytest.raises(ModelLoadError) as err:
            server.start(timeout=120)
        assert "weights are on holiday" in str(err.value)
        assert "food_classifier" in str(err.value)
    finally:
        server.stop()
    assert not tritonservers_in(tmp_path / "state")


CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tritonlab.serving.embedded import EmbeddedTriton
    from tritonlab.settings import TritonAddress
    ports = TritonAddress("127.0.0.1", *map(int, sys.argv[3:6]))
    server = EmbeddedTriton(sys.argv[1], address=ports, state_dir=sys.argv[2])
    server.start()
    print("READY", server.recorded()["pid"], flush=True)
    time.sleep(600)
""")


def test_server_dies_with_the_process_that_started_it(tmp_path, repository):
    """A kernel killed or restarted must not leave its Triton behind."""
    state = tmp_path / "state"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(repository), str(state),
                              *map(str, free_ports())], stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line.startswith("READY"), line
        pid = int(line.split()[1])
        assert psutil.pid_exists(pid)
        child.send_signal(signal.SIGKILL)  # as a kernel restart does
        child.wait(10)
        deadline = time.monotonic() + 30
        while tritonservers_in(state) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not tritonservers_in(state)
    finally:
        child.kill()


def test_triton_killed_during_a_perf_run(tmp_path, repository):
    """The run ends with an error naming what happened (no hang), nothing is left behind, and
    the same lifecycle object brings Triton back."""
    from tritonlab.assets import samples
    from tritonlab.measuring import perf
    from tritonlab.serving import clients

    server = EmbeddedTriton(repository, address=TritonAddress.free(), state_dir=tmp_path / "state")
    try:
        server.start(["food_classifier"])
        pid = server.recorded()["pid"]
        killer = threading.Timer(6.0, os.kill, (pid, signal.SIGKILL))
        opts = perf.PerfSettings(concurrency=[4], measurement_ms=4000, max_trials=20)
        killer.start()
        began = time.monotonic()
        with pytest.raises(perf.PerfError) as err:
            perf.run(server, "food_classifier", "killed mid-run", opts, save=False)
        elapsed = time.monotonic() - began
        killer.join()
        message = str(err.value)
        assert "Triton went away during the run" in message
        assert "killed by SIGKILL" in message
        assert "server.restart()" in message
        assert elapsed < 120, f"perf run took {elapsed:.0f} s to notice"
        deadline = time.monotonic() + 15  # model stubs leave within a second of their server
        while tritonservers_in(tmp_path / "state") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not tritonservers_in(tmp_path / "state")

        server.restart()
        assert server.is_ready()
        [pred] = clients.classify(server.http_url, samples.sample_images()[:1])
        assert 0 < pred.probability <= 1
    finally:
        server.stop()
    assert not tritonservers_in(tmp_path / "state")


def test_serve_a_named_variant_and_refuse_an_unknown_one(tmp_path, triton, images):
    """`make serve VARIANT=...`: an unknown name is refused with the names there are, nothing
    started; a known one (the same `serve_variant` the CLI's config comes from) gets its ONNX
    export first and answers, and the baseline comes back after."""
    from tritonlab.serving import clients, deploy

    env = dict(os.environ, TRITONLAB_STATE_DIR=str(tmp_path / "state"),
               TRITON_URL=TritonAddress.free().url,
               TRITONLAB_MODEL_REPOSITORY=str(tmp_path / "nowhere"))
    refused = subprocess.run([sys.executable, "-m", "tritonlab", "serve", "--variant", "quickest"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "baseline, fastest" in refused.stderr
    assert not tritonservers_in(tmp_path / "state")
    onnx = triton.model_repository / "food_classifier" / "1" / "food11.onnx"
    onnx.unlink(missing_ok=True)  # as in a fresh clone
    try:
        deploy.serve_variant(triton, "fastest")
        text = (triton.model_repository / "food_classifier" / "config.pbtxt").read_text()
        assert 'string_value: "onnxruntime"' in text and onnx.exists()
        assert "variant 'fastest'" in text  # the generated file names what it is
        assert clients.classify(triton.http_url, images[:2])[0].label
        assert "onnxruntime on cpu" in triton.logs(200, model="food_classifier")
    finally:
        deploy.restore_baseline(triton)


@pytest.mark.parametrize("talks", [True, False])
def test_a_slow_start_is_waited_for_while_triton_s_log_grows(tmp_path, talks):
    """The readiness wait's timeout counts the time with nothing new in Triton's log: a model
    that takes 8 s to load and says so each second is waited for with a 3 s timeout; one that
    loads in silence is given up after 3 s quiet, and the error says so."""
    repo = tmp_path / "model_repository"
    add_slow_model(repo, load_seconds="8", load_talks="1" if talks else "0")
    server = EmbeddedTriton(repo, address=TritonAddress.free(), state_dir=tmp_path / "state")
    try:
        if talks:
            assert server.start(["slow_model"], timeout=3) >= 8
            assert "[slow_model] loading: 8 s" in server.log_text()
        else:
            with pytest.raises(ServerNotReady, match="nothing new in its log for 3 s"):
                server.start(["slow_model"], timeout=3)
    finally:
        server.stop()
