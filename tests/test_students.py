"""The course survives its students: two notebooks open at once, `make serve` left running, a
config Triton refuses, a renamed model, an interrupted measurement. Real Jupyter kernels (as
JupyterLab starts them, each told its notebook by JPY_SESSION_NAME) on a real Triton; each
test has its own checkout state (pid file, ports, results), with the classifier alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import psutil
import pytest
import requests
from jupyter_client import KernelManager

from tritonlab.serving import ModelLoadError, ServerNotReady, configs, deploy
from tritonlab.serving.embedded import EmbeddedTriton
from tritonlab.settings import TritonAddress

from .conftest import tritonservers_in

pytestmark = pytest.mark.server

#: What a notebook's first cells do: the server, started (the classifier alone, as 02-05 do).
START = """
from tritonlab.measuring import perf
from tritonlab.serving import configs, deploy, get_server
server = get_server()
print(f"started in {server.start(['food_classifier']):.1f} s")
"""


class Kernel:
    """A real IPython kernel for one notebook, as JupyterLab starts it."""

    def __init__(self, env: dict, notebook: str) -> None:
        self.manager = KernelManager(kernel_name="python3")
        self.manager.start_kernel(env=dict(env, JPY_SESSION_NAME=notebook))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=120)

    @property
    def pid(self) -> int:
        return self.manager.provisioner.process.pid

    def run(self, code: str, timeout: float = 300) -> dict:
        """Run a cell; its reply: status, ename, evalue, and what it printed."""
        printed = []

        def output(msg):
            if msg["msg_type"] == "stream":
                printed.append(msg["content"]["text"])

        reply = self.client.execute_interactive(code, timeout=timeout, output_hook=output)
        content = reply["content"]
        return {"status": content["status"], "ename": content.get("ename"),
                "evalue": content.get("evalue", ""), "out": "".join(printed)}

    def close(self) -> None:
        """As a kernel restart or a closed notebook does: the kernel process is killed."""
        if self.manager.has_kernel:
            self.client.stop_channels()
            self.manager.shutdown_kernel(now=True)


@pytest.fixture
def checkout(tmp_path, repository):
    """A checkout's worth of state: the classifier alone, its own pid file, ports, results."""
    repo = tmp_path / "model_repository"
    shutil.copytree(repository / "food_classifier", repo / "food_classifier",
                    ignore=shutil.ignore_patterns("__pycache__"))
    address = TritonAddress.free()
    env = dict(os.environ, TRITONLAB_STATE_DIR=str(tmp_path / "state"),
               TRITON_URL=address.url, TRITONLAB_MODEL_REPOSITORY=str(repo),
               TRITONLAB_RESULTS_DIR=str(tmp_path / "results"), TRITONLAB_QUICK="1",
               TRITONLAB_MODE="embedded")
    kernels: list[Kernel] = []
    yield {"env": env, "repo": repo, "state": tmp_path / "state", "address": address,
           "results": tmp_path / "results", "kernels": kernels}
    for kernel in kernels:
        kernel.close()
    EmbeddedTriton(repo, address=address, state_dir=tmp_path / "state").stop_any()
    assert not tritonservers_in(tmp_path / "state")


def kernel(checkout, notebook: str) -> Kernel:
    k = Kernel(checkout["env"], notebook)
    checkout["kernels"].append(k)
    return k


def running(pid: int) -> bool:
    """Whether `pid` runs (a zombie has ended: whoever inherited it reaps it in its time)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def recorded_pid(checkout) -> int:
    return json.loads((checkout["state"] / "tritonserver.json").read_text())["pid"]


def test_a_second_notebook_leaves_the_first_ones_triton_alone(checkout):
    """02 runs its Triton; 03, opened beside it, is told who holds the server and what frees
    it, and neither starts, reloads, measures nor stops it; once 02's kernel is gone, 03
    starts its own at once."""
    first = kernel(checkout, "notebooks/02_baseline.ipynb")
    second = kernel(checkout, "notebooks/03_dynamic_batching.ipynb")
    assert first.run(START)["status"] == "ok"
    held = recorded_pid(checkout)
    config = checkout["repo"] / "food_classifier" / "config.pbtxt"
    before = config.read_bytes()

    began = time.monotonic()
    refused = second.run(START)
    assert refused["ename"] == "ServerBusyError", refused
    assert "notebook 02_baseline.ipynb" in refused["evalue"] and "make stop" in refused["evalue"]
    assert time.monotonic() - began < 60  # nothing is waited for (the kernel imports torch)
    for cell in ('deploy.deploy(server, configs.classifier_config(dynamic_batching={}))',
                 'perf.run(server, "food_classifier", "dynamic batching", '
                 'perf.PerfSettings.for_course([1]))'):
        again = second.run(cell)
        assert again["ename"] == "ServerBusyError", again
    assert config.read_bytes() == before and not checkout["results"].exists()
    assert second.run("server.stop()")["status"] == "ok"
    assert running(held) and recorded_pid(checkout) == held
    assert first.run("assert server.is_ready()")["status"] == "ok"

    first.close()  # its kernel restarted: its Triton goes with it
    began = time.monotonic()
    started = second.run(START)
    assert started["status"] == "ok", started
    assert time.monotonic() - began < 60 and recorded_pid(checkout) != held
    assert second.run("server.stop()")["status"] == "ok"


def test_make_serve_s_triton_is_left_to_make_stop(checkout):
    """`make serve` leaves Triton running for the API and curl: a notebook's start refuses to
    take it, naming `make stop`; `make serve` again replaces its own; `make stop` ends it."""
    env = checkout["env"]

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "tritonlab", *args], env=env,
                              capture_output=True, text=True, timeout=300)

    served = cli("serve")
    assert served.returncode == 0, served.stdout + served.stderr
    url = f"http://{checkout['address'].http_url}"
    assert url in served.stdout and requests.get(f"{url}/v2/health/ready", timeout=5).ok
    held = recorded_pid(checkout)
    notebook = kernel(checkout, "notebooks/02_baseline.ipynb")
    refused = notebook.run(START)
    assert refused["ename"] == "ServerBusyError" and "`make serve`" in refused["evalue"]
    assert "make stop" in refused["evalue"] and running(held)
    assert cli("status").returncode == 0

    again = cli("serve")  # another variant, say: its own server is replaced
    assert again.returncode == 0, again.stdout + again.stderr
    assert not running(held) and len(
        [p for p in tritonservers_in(checkout["state"]) if p.name() == "tritonserver"]) == 1
    stopped = cli("stop")
    assert stopped.returncode == 0 and "started by `make serve`" in stopped.stdout
    assert not tritonservers_in(checkout["state"]) and "No Triton was running" in cli("stop").stdout
    assert notebook.run(START)["status"] == "ok"
    assert notebook.run("server.stop()")["status"] == "ok"


def test_an_interrupted_measurement_saves_nothing_and_leaves_no_perf_analyzer(checkout):
    """The stop button during a perf cell: one line saying so, perf_analyzer reaped, no file
    saved, and the server keeps serving."""
    notebook = kernel(checkout, "notebooks/02_baseline.ipynb")
    assert notebook.run(START)["status"] == "ok"
    # 20 s windows, no probe: perf_analyzer is surely running when the interrupt comes
    cell = notebook.client.execute(
        'opts = perf.PerfSettings.for_course([1], measurement_ms=20000, adapt_windows=False)\n'
        'perf.run(server, "food_classifier", "baseline", opts)')
    kernel_process = psutil.Process(notebook.pid)

    def perf_analyzers():
        return [p for p in kernel_process.children(recursive=True)
                if p.name().startswith("perf_analyzer")]

    deadline = time.monotonic() + 120
    while not perf_analyzers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert perf_analyzers(), "perf_analyzer never started"
    notebook.manager.interrupt_kernel()
    reply = notebook.client.get_shell_msg(timeout=60)
    while reply["parent_header"].get("msg_id") != cell:
        reply = notebook.client.get_shell_msg(timeout=60)
    assert reply["content"]["ename"] == "MeasurementInterrupted", reply["content"]
    assert "nothing of this run was saved" in reply["content"]["evalue"]
    assert not perf_analyzers()  # not even a zombie
    assert not list(checkout["results"].glob("*.json")) if checkout["results"].exists() else True
    assert notebook.run("assert server.is_ready()")["status"] == "ok"
    assert notebook.run("server.stop()")["status"] == "ok"


# --- configs Triton refuses ----------------------------------------------------------------------
@pytest.fixture
def server(checkout):
    """The classifier alone on its own Triton, started by this process."""
    triton = EmbeddedTriton(checkout["repo"], address=checkout["address"],
                            state_dir=checkout["state"])
    triton.start()
    yield triton
    triton.stop()


def refused_by_triton() -> configs.mc.ModelConfig:
    """A config the course's checks pass and Triton refuses: the model's own code raises."""
    cfg = configs.classifier_config()
    cfg.parameters["runtime"].string_value = "no-such-runtime"
    configs.validate(cfg)
    return cfg


def test_a_config_triton_refuses_leaves_what_it_serves_on_disk(server):
    config = server.model_repository / "food_classifier" / "config.pbtxt"
    before = config.read_bytes()
    with pytest.raises(ModelLoadError, match="put back, the config Triton still serves"):
        deploy.deploy(server, refused_by_triton())
    assert config.read_bytes() == before and server.is_ready()
    assert deploy.served_mismatch(server, "food_classifier",
                                  deploy.expected_config(server, "food_classifier")) == ""

    with pytest.raises(ModelLoadError, match="put back, and Triton serves it again"):
        deploy.deploy(server, refused_by_triton(), how="restart")
    assert config.read_bytes() == before and server.is_ready()


def test_a_config_named_after_no_model_folder_is_refused_before_anything_is_written(server):
    text = configs.to_text(configs.classifier_config()).replace(
        'name: "food_classifier"', 'name: "food_classifier_mine"')
    with pytest.raises(configs.ConfigError, match="no model folder 'food_classifier_mine'"):
        deploy.edit(server, text)
    assert sorted(p.name for p in server.model_repository.iterdir()) == ["food_classifier"]
    assert server.is_ready()


def test_a_server_kept_not_ready_by_a_failed_model_says_so_at_once(server):
    """A model folder whose load failed keeps Triton not ready for the rest of its run (its
    strict readiness), however READY the course's models are: the wait says why within
    seconds, instead of blaming a slow start after 120 s. `make configs` moves the folder out."""
    stray = server.model_repository / "leftover"
    stray.mkdir()
    (stray / "config.pbtxt").write_text('name: "leftover"\nbackend: "python"\n')
    with pytest.raises(ModelLoadError):
        server.reload_model("leftover")
    began = time.monotonic()
    with pytest.raises(ServerNotReady, match="failed to load") as raised:
        server.reload_model("food_classifier")
    assert time.monotonic() - began < 30 and "leftover" in str(raised.value)

    moved = configs.remove_stray_models(server.model_repository)
    assert [name for name, _ in moved] == ["leftover"] and not stray.exists()
    assert (moved[0][1] / "config.pbtxt").exists()  # moved, not deleted
    server.restart()
    assert server.is_ready()


def test_a_measurement_of_a_config_changed_behind_the_notebook_is_refused(server):
    """What Triton serves is asked of Triton: a model reloaded with another config than the one
    loaded here (another session, a hand edit and a reload elsewhere) is not measured."""
    from tritonlab.measuring import perf

    deploy.deploy(server, configs.classifier_config(dynamic_batching={
        "preferred_batch_size": [4], "max_queue_delay_microseconds": 5000}))
    other = EmbeddedTriton(server.model_repository, address=server.address,
                           state_dir=server.state_dir)  # same process: allowed to control it
    other.reload_model("food_classifier", config=configs.classifier_config())
    with pytest.raises(perf.PerfError, match="Not measured: .*dynamic_batching"):
        perf.run(server, "food_classifier", "dynamic batching",
                 perf.PerfSettings.for_course([1]), save=False)
