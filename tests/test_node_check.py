"""The GPU node's container path as `make node-check` runs it: compose files, the node script,
stand-in base images, the engine and the report.

The whole path runs for real in Docker under `make node-check` (CI: `make node-check-short`,
from .ci/run). These tests check its parts without building images: compose files resolved by
the installed Compose itself, the node script run with stand-in `docker`/`docker-compose`
commands that record their arguments, and the report from a made-up run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tritonlab import settings
from tritonlab.node import check, engine, standins

ROOT = settings.ROOT
SCRIPT = ROOT / "tritonlab" / "gpu_node_setup.sh"


# --- compose files -------------------------------------------------------------------------------
def compose_commands() -> list[list[str]]:
    """The Compose implementations installed here: v2 (`docker compose`) and/or 1.29."""
    found = []
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:
        found.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        found.append(["docker-compose"])
    return found


def resolved(compose: list[str], files: str, **env: str) -> dict:
    """`compose config` of the project's files (COMPOSE_FILE), as YAML: what Compose itself
    makes of them, variables interpolated."""
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("COMPOSE_", "TRITONLAB_"))}
    environment.update(COMPOSE_FILE=files, TRITONLAB_API_KEY="k3y", **env)
    out = subprocess.run([*compose, "config"], capture_output=True, text=True, cwd=ROOT,
                         env=environment, timeout=60)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


@pytest.fixture(params=compose_commands() or [None], ids=lambda c: " ".join(c or ["none"]))
def compose(request):
    if request.param is None:
        pytest.skip("no Docker Compose here (`make node-check` installs Debian's docker-compose)")
    return request.param


def test_compose_yaml_alone_publishes_nothing_and_reserves_no_gpu():
    """What only the node may have is in compose.node.yaml; the rest works anywhere."""
    base = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert "name" not in base  # docker-compose 1.29 refuses a top-level name
    for name, service in base["services"].items():
        assert "ports" not in service and "deploy" not in service, name
    node = yaml.safe_load((ROOT / "compose.node.yaml").read_text())["services"]
    assert node["triton"]["deploy"]["resources"]["reservations"]["devices"][0][
        "capabilities"] == ["gpu"]
    for name, service in node.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_compose_resolves_the_node_and_the_check_alike(compose):
    """Compose itself (v2 and/or 1.29, whichever is installed) reads every combination."""
    node = resolved(compose, "compose.yaml:compose.node.yaml")
    triton, jupyter = node["services"]["triton"], node["services"]["jupyter"]
    assert "network_mode" not in triton and node["networks"]["default"]["name"] == "tritonlab"
    published = dict(check.port_binding(p) for s in (triton, jupyter) for p in s["ports"])
    assert published == dict.fromkeys(["8000", "8001", "8002", "8888", "8080"], "127.0.0.1")
    assert triton["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "--http-address=0.0.0.0" in triton["command"]  # the container's own interfaces
    assert "--http-restricted-api=model-repository:X-Tritonlab-Key=k3y" in triton["command"]

    here = resolved(compose, "compose.yaml:compose.host-network.yaml",
                    TRITONLAB_BIND_ADDRESS="127.0.0.1")
    for name in ("triton", "jupyter"):
        service = here["services"][name]
        assert service["network_mode"] == "host" and not service.get("ports"), name
        assert service["build"]["network"] == "host"
        assert "deploy" not in service
    assert "--http-address=127.0.0.1" in here["services"]["triton"]["command"]
    hosts = here["services"]["jupyter"]["extra_hosts"]
    assert hosts in (["triton:127.0.0.1"], {"triton": "127.0.0.1"}, ["triton=127.0.0.1"])
    assert here["services"]["jupyter"]["environment"]["TRITONLAB_BIND_ADDRESS"] == "127.0.0.1"
    assert here["services"]["jupyter"]["environment"]["TRITON_URL"] == "http://triton:8000"


def test_compose_refuses_to_start_without_a_key(compose):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TRITONLAB_")}
    environment["COMPOSE_FILE"] = "compose.yaml"
    out = subprocess.run([*compose, "config"], capture_output=True, text=True, cwd=ROOT,
                         env=environment, timeout=60)
    assert out.returncode != 0 and "set TRITONLAB_API_KEY in .env" in out.stdout + out.stderr


# --- the node script -----------------------------------------------------------------------------
RECORDER = """#!/bin/sh
# records its name and arguments; `docker compose version` answers as $COMPOSE_V2 says
echo "$(basename "$0") $*" >> "$CALLS"
if [ "$(basename "$0") $1 $2" = "docker compose version" ]; then
  [ -n "$COMPOSE_V2" ] && { echo "Docker Compose version v2.29.7"; exit 0; }
  echo "docker: 'compose' is not a docker command." >&2; exit 1
fi
if [ "$(basename "$0") $1" = "docker info" ]; then echo cgroupfs; fi
exit 0
"""


#: curl here: records the download it was asked for and fails, as offline (no installer runs).
OFFLINE = """#!/bin/sh
echo "curl $*" >> "$CALLS"
echo "curl: (6) Could not resolve host" >&2
exit 6
"""


@pytest.fixture()
def node_folder(tmp_path, monkeypatch):
    """A course folder holding the node script, with recording stand-ins for docker,
    docker-compose, dpkg, nvidia-ctk and systemctl first on PATH; returns (folder, calls)."""
    if os.geteuid() != 0:
        pytest.skip("the script calls sudo when not root")
    folder = tmp_path / "course"
    (folder / "tritonlab").mkdir(parents=True)
    shutil.copy(SCRIPT, folder / "tritonlab" / SCRIPT.name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("docker", "docker-compose", "dpkg", "nvidia-ctk", "systemctl", "curl"):
        (bin_dir / name).write_text(RECORDER if name != "curl" else OFFLINE)
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls"
    calls.touch()
    monkeypatch.setenv("CALLS", str(calls))
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    for name in ("TRITONLAB_API_KEY", "COMPOSE_PROJECT_NAME", "COMPOSE_FILE", "COMPOSE_V2"):
        monkeypatch.delenv(name, raising=False)
    return folder, calls


def run_step(folder: Path, *steps: str, **env: str) -> subprocess.CompletedProcess:
    out = subprocess.run(["bash", str(folder / "tritonlab" / SCRIPT.name), *steps],
                         capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_images_step_writes_env_once_and_builds_with_compose_1_29(node_folder):
    folder, calls = node_folder
    run_step(folder, "images")
    first = (folder / ".env").read_text()
    lines = dict(line.split("=", 1) for line in first.splitlines())
    assert lines["COMPOSE_PROJECT_NAME"] == "tritonlab"
    assert lines["COMPOSE_FILE"] == "compose.yaml:compose.node.yaml"
    assert len(lines["TRITONLAB_API_KEY"]) == 32
    assert "docker-compose build --parallel" in calls.read_text().splitlines()  # no v2 plugin
    run_step(folder, "images")
    assert (folder / ".env").read_text() == first  # the key once made is kept


def test_images_step_prefers_compose_v2_and_leaves_env_to_the_caller(node_folder):
    """`make node-check` sets the three variables: .env stays untouched."""
    folder, calls = node_folder
    run_step(folder, "images", COMPOSE_V2="1", TRITONLAB_API_KEY="k", COMPOSE_PROJECT_NAME="t",
             COMPOSE_FILE="compose.yaml:compose.host-network.yaml")
    assert not (folder / ".env").exists()
    assert "docker compose build" in calls.read_text().splitlines()
    assert "docker-compose build" not in calls.read_text()


def test_docker_engine_step_installs_docker_where_compose_v2_is_missing(node_folder):
    """A docker command without the Compose plugin (a distribution's docker.io) is not enough:
    the step fetches Docker's installer (here curl fails, as offline, and so does the step)."""
    folder, calls = node_folder
    out = subprocess.run(["bash", str(folder / "tritonlab" / SCRIPT.name), "docker_engine"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "docker present" not in out.stdout
    assert "curl -fsSL https://get.docker.com" in calls.read_text()
    out = run_step(folder, "docker_engine", COMPOSE_V2="1")
    assert "docker present" in out.stdout


def test_nvidia_toolkit_step_sets_the_cgroupfs_driver_once(node_folder, tmp_path):
    """NVIDIA/nvidia-container-toolkit#48: the cgroupfs driver, kept with the runtime entry
    nvidia-ctk wrote, and Docker restarted only when daemon.json changed."""
    folder, calls = node_folder
    daemon = tmp_path / "daemon.json"
    daemon.write_text(json.dumps({"runtimes": {"nvidia": {"path": "nvidia-container-runtime"}},
                                  "exec-opts": ["native.cgroupdriver=systemd"]}))
    run_step(folder, "nvidia_toolkit", DOCKER_DAEMON_JSON=str(daemon))
    config = json.loads(daemon.read_text())
    assert config["exec-opts"] == ["native.cgroupdriver=cgroupfs"]
    assert config["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    assert calls.read_text().count("systemctl restart docker") == 1
    run_step(folder, "nvidia_toolkit", DOCKER_DAEMON_JSON=str(daemon))
    assert calls.read_text().count("systemctl restart docker") == 1  # nothing changed


# --- stand-in base images ------------------------------------------------------------------------
def test_every_base_image_of_the_dockerfiles_has_a_stand_in():
    names = standins.base_images()
    assert names == ["nvcr.io/nvidia/tritonserver:24.10-py3", "python:3.11-slim-bookworm"]
    for name in names:
        text = standins.recipe(name)
        assert text.startswith(f"FROM {standins.DEBIAN_IMAGE}\n")
        assert standins.RECIPES[name]["differences"], name


def test_the_triton_stand_in_carries_the_course_s_own_server():
    """The same nvidia-pytriton as pyproject.toml (server 2.51.0, the 24.10 image's), laid out
    as in the NGC image, and the CUDA runtime of torch 2.7.1 (the image's CUDA 12.6)."""
    text = standins.recipe("nvcr.io/nvidia/tritonserver:24.10-py3")
    assert f'"{standins.PYTRITON}"' in (ROOT / "pyproject.toml").read_text()
    assert "mv /tmp/x/pytriton/tritonserver/bin /tmp/x/pytriton/tritonserver/caches " \
           "/opt/tritonserver/" in text
    for path in ("/opt/tritonserver/lib", "/opt/tritonserver/backends/python/",
                 "/usr/local/cuda/lib64"):
        assert path in text
    assert "python_backend_stubs/$py/triton_python_backend_stub" in text
    pins = (ROOT / "requirements" / "triton-image.txt").read_text()
    assert "torch==2.7.1" in pins and standins.CUDA_RUNTIME.endswith("==12.6.77")


def test_a_stand_in_is_rebuilt_when_its_recipe_changes(monkeypatch):
    name = "python:3.11-slim-bookworm"
    before = standins.recipe_id(name)
    assert standins.recipe_id(name) == before
    monkeypatch.setitem(standins.RECIPES[name], "lines", "ENV LANG=C\n")
    assert standins.recipe_id(name) != before


def test_dockerfiles_name_no_package_only_one_distribution_has():
    """Each apt line must install on the real base and on the stand-in: `python3-venv` is
    python3.10-venv on Ubuntu 22.04 and python3.11-venv on Debian 12."""
    lines = [line for line in (ROOT / "Dockerfile.triton").read_text().splitlines()
             if not line.lstrip().startswith("#")]
    assert not any("python3.10-venv" in line for line in lines)
    assert any("python3-venv" in line for line in lines)


# --- the engine ----------------------------------------------------------------------------------
def test_compose_is_v2_where_the_plugin_answers_else_1_29(tmp_path, monkeypatch):
    (tmp_path / "docker").write_text(RECORDER)
    (tmp_path / "docker-compose").write_text(RECORDER)
    for name in ("docker", "docker-compose"):
        (tmp_path / name).chmod(0o755)
    (tmp_path / "basename").symlink_to(shutil.which("basename"))
    monkeypatch.setenv("CALLS", str(tmp_path / "calls"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no other docker-compose than this one
    docker = engine.DockerEngine(tmp_path / "state", docker=str(tmp_path / "docker"))
    monkeypatch.setenv("COMPOSE_V2", "1")
    assert docker.compose() == [str(tmp_path / "docker"), "compose"]
    monkeypatch.delenv("COMPOSE_V2")
    assert docker.compose() == ["docker-compose"]
    (tmp_path / "docker-compose").unlink()
    with pytest.raises(engine.EngineError, match="No Docker Compose here"):
        docker.compose()


def test_commands_go_through_sudo_only_when_not_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert engine.as_root(["apt-get", "update"]) == ["sudo", "apt-get", "update"]
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert engine.as_root(["apt-get", "update"]) == ["apt-get", "update"]


def test_a_daemon_left_by_an_interrupted_check_is_stopped_by_the_next(tmp_path):
    """Its pid file names a dockerd: the next check adopts it, so that `stop` ends it; a pid
    file naming another process is dropped, that process left alone."""
    state = tmp_path / "state"
    state.mkdir()
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    # A program named dockerd stands in for the daemon: a copy of sleep, one exec and no more
    # (a `python3` that is a pyenv shim execs three times). Until its exec is done, its
    # /proc/PID/cmdline reads empty, so the test waits for it; a daemon an earlier check left
    # has long been running.
    stand_in = tmp_path / "dockerd"
    shutil.copy(shutil.which("sleep"), stand_in)
    daemon = subprocess.Popen([str(stand_in), "60"], start_new_session=True)
    cmdline = Path(f"/proc/{daemon.pid}/cmdline")
    deadline = time.monotonic() + 10
    while not cmdline.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert other.poll() is None and daemon.poll() is None, "the stand-in processes did not start"
    try:
        (state / "dockerd.pid").write_text(f"{other.pid}\n")
        docker = engine.DockerEngine(state)
        docker._adopt()
        assert docker.started_pid is None and not (state / "dockerd.pid").exists()
        (state / "dockerd.pid").write_text(f"{daemon.pid}\n")
        docker._adopt()
        assert docker.started_pid == daemon.pid
        assert docker.stop() and daemon.wait(timeout=30) is not None
        assert other.poll() is None and not (state / "dockerd.pid").exists()
    finally:
        other.kill()
        daemon.kill()


# --- the report ----------------------------------------------------------------------------------
def made_up_run(failed: bool) -> dict:
    base = standins.BaseImage("python:3.11-slim-bookworm", "stand-in built", True, 22.0,
                              "no such host", ["Debian's Python 3.11.2"])
    steps = [check.Step("images (gpu_node_setup.sh images)", "passed", 577.0,
                        "tritonlab-triton 7.8 GB"),
             check.Step("notebook 02_baseline.ipynb", "failed" if failed else "passed", 87.0,
                        "exit 1; log build/node-check/logs/notebook-02_baseline.log\nPerfError: x"
                        if failed else "executed copy: build/node-check/lab/02_baseline.ipynb")]
    return {"check": "full", "commit": "abc1234", "started": "2026-12-07T12:00:00+00:00",
            "seconds": 700, "machine": "ci x86_64, 2 cores", "bases": [base.as_dict()],
            "steps": [s.__dict__ for s in steps]}


def test_the_report_says_which_bases_were_stand_ins_and_why_a_step_failed():
    text = check.markdown(made_up_run(failed=True))
    assert "STAND-IN BASE IMAGES" in text and "no such host" in text
    assert "| notebook 02_baseline.ipynb | failed | 87 |" in text
    assert "## notebook 02_baseline.ipynb: failed" in text and "PerfError: x" in text
    passed = check.markdown(made_up_run(failed=False))
    assert ": failed" not in passed and "| passed | 87 |" in passed


def test_the_short_check_runs_notebook_01_and_the_full_one_every_notebook():
    assert check.NodeCheck(short=True).planned_notebooks() == list(check.SHORT_NOTEBOOKS)
    full = check.NodeCheck().planned_notebooks()
    assert full[0].startswith("01_") and full[-1].startswith("A1_") and len(full) == 12
    assert not any(name.startswith("00_") for name in full)  # notebook 00 runs on Chameleon
