"""The GPU-node path up to its boundary: python-chi calls, Docker commands, Dockerfiles, compose.

No Chameleon, Docker engine or GPU can be reached here, so each test checks what those would
receive against the installed library or the files it names.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import subprocess

import pytest
import requests
import yaml

from tritonlab import settings
from tritonlab.serving import ServerError, choose_mode, configs, get_server
from tritonlab.serving.docker import (
    GRPC_KEY_HEADER,
    KEY_HEADER,
    DockerTriton,
    restriction_flags,
)
from tritonlab.serving.embedded import EmbeddedTriton
from tritonlab.settings import TritonAddress

NOTEBOOK_00 = settings.NOTEBOOKS / "00_gpu_node.ipynb"


def notebook_code(path) -> str:
    cells = json.loads(path.read_text())["cells"]
    return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def test_every_python_chi_call_in_notebook_00_exists():
    """Module functions, classes and methods, with their keyword arguments, as installed."""
    chi = pytest.importorskip("chi")
    from chi import context, hardware, lease, server

    modules = {"context": context, "hardware": hardware, "lease": lease, "server": server}
    tree = ast.parse(notebook_code(NOTEBOOK_00))
    # what each variable holds, for method calls: my_lease = lease.Lease(...) etc.
    makers = {("lease", "Lease"): lease.Lease, ("lease", "get_lease"): lease.Lease,
              ("server", "Server"): server.Server, ("server", "get_server"): server.Server}
    types: dict[str, type] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                made = makers.get((func.value.id, func.attr))
                if made is None and func.value.id in types:  # node = node.submit(...)
                    made = types[func.value.id] if func.attr == "submit" else None
                for target in node.targets:
                    if isinstance(target, ast.Name) and made is not None:
                        types[target.id] = made
    checked = 0
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        target = None
        if isinstance(owner, ast.Name) and owner.id in modules:
            target = getattr(modules[owner.id], node.func.attr, None)
            assert target is not None, f"chi.{owner.id} has no {node.func.attr}"
        elif isinstance(owner, ast.Name) and owner.id in types:
            target = getattr(types[owner.id], node.func.attr, None)
            assert target is not None, f"{types[owner.id].__name__} has no {node.func.attr}"
        elif isinstance(owner, ast.Call) and isinstance(owner.func, ast.Attribute) and \
                isinstance(owner.func.value, ast.Name) and \
                (owner.func.value.id, owner.func.attr) in makers:
            made = makers[(owner.func.value.id, owner.func.attr)]
            target = getattr(made, node.func.attr, None)
            assert target is not None, f"{made.__name__} has no {node.func.attr}"
        if target is None:
            continue
        params = inspect.signature(target).parameters
        takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
        for kw in node.keywords:
            assert kw.arg in params or takes_any, \
                f"{node.func.attr}() takes no argument {kw.arg!r} in python-chi {chi.__name__}"
        checked += 1
    assert checked >= 12, f"only {checked} python-chi calls found"


def test_notebook_00_says_where_each_step_runs_and_deletes_last():
    cells = json.loads(NOTEBOOK_00.read_text())["cells"]
    headings = [c for c in cells if c["cell_type"] == "markdown" and
                "".join(c["source"]).startswith("#")]
    for cell in headings[1:]:
        assert "*(" in "".join(cell["source"]), "a section does not say where it runs"
    code = notebook_code(NOTEBOOK_00)
    assert code.rfind(".delete()") > code.rfind("gpu_node_setup.sh")
    assert "DELETE = False" in code


def test_node_setup_script_is_valid_bash_with_each_step():
    script = settings.ROOT / "tritonlab" / "gpu_node_setup.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    for step in re.findall(r"gpu_node_setup\.sh (\w+)", notebook_code(NOTEBOOK_00)):
        assert f"\n{step}() {{" in text, f"notebook 00 runs a step the script lacks: {step}"


FAKE_DOCKER = """#!/bin/sh
# A stand-in for the docker CLI: records each call, answers as Docker would for a container
# named triton (running), or says it does not exist when NO_CONTAINER is set.
echo "$*" >> "$DOCKER_CALLS"
if [ -n "$NO_CONTAINER" ]; then
  echo "Error response from daemon: No such container: triton" >&2; exit 1
fi
case "$1 $3" in
  "inspect {{.State.Running}}") echo true ;;
  "inspect {{.State.StartedAt}}") echo 2026-11-29T12:00:00Z ;;
  "inspect {{.State.ExitCode}}") echo 0 ;;
  "logs "*) echo "I1129 model_lifecycle.cc] successfully loaded 'food_classifier'" ;;
esac
"""


@pytest.fixture()
def fake_docker(tmp_path, monkeypatch):
    """A `docker` executable that records its calls (one line each) in a file."""
    path = tmp_path / "docker"
    path.write_text(FAKE_DOCKER)
    path.chmod(0o755)
    calls = tmp_path / "calls"
    calls.touch()
    monkeypatch.setenv("DOCKER_CALLS", str(calls))
    return path, calls


def compose_triton_command() -> list[str]:
    compose = yaml.safe_load((settings.ROOT / "compose.yaml").read_text())
    return compose["services"]["triton"]["command"]


def test_compose_server_flags_exist_in_this_tritonserver():
    """The container's flags (compose.yaml, their one home) are flags of server 2.51, the
    same binary as NGC 24.10; the restriction flags are those `restriction_flags` builds."""
    server = EmbeddedTriton()
    out = subprocess.run([str(server.binary()), "--help"], capture_output=True, text=True,
                         env=server._environment())
    usage = out.stdout + out.stderr
    command = compose_triton_command()
    assert command[0] == "tritonserver"
    for arg in command[1:]:
        assert arg.split("=")[0] in usage, arg
    key = "${TRITONLAB_API_KEY:?set TRITONLAB_API_KEY in .env}"
    assert set(restriction_flags(key)) <= set(command)


@pytest.mark.server
def test_docker_mode_drives_the_compose_container(triton, fake_docker):
    """start, readiness, logs and stop go to the compose file's container by name; Triton is
    reached at TRITON_URL (here the session's real server stands in for the container)."""
    docker, calls = fake_docker
    server = DockerTriton(model_repository=triton.model_repository, address=triton.address,
                          key="k3y", docker=str(docker))
    assert server.api_headers == {KEY_HEADER: "k3y"}
    assert server.start() >= 0
    assert server.is_running() and server.is_ready()
    assert "successfully loaded 'food_classifier'" in server.logs()
    server.stop(timeout=20)
    recorded = calls.read_text().splitlines()
    assert recorded[0] == "start triton"
    assert "logs --since 2026-11-29T12:00:00Z triton" in recorded
    assert recorded[-1] == "stop -t 20 triton"
    assert not any(line.startswith(("run", "rm", "create")) for line in recorded)


def test_docker_mode_says_how_to_create_a_missing_container(fake_docker, monkeypatch):
    docker, calls = fake_docker
    monkeypatch.setenv("NO_CONTAINER", "1")
    server = DockerTriton(key="k", docker=str(docker))
    with pytest.raises(ServerError, match="gpu_node_setup.sh containers"):
        server.start(timeout=5)
    assert not server.is_running()


def test_docker_mode_reaches_triton_at_triton_url_on_any_port(monkeypatch):
    """Inside the compose network the address is TRITON_URL, whatever the host publishes."""
    monkeypatch.setenv("TRITON_URL", "http://triton:9000")
    server = DockerTriton(key="k")
    assert (server.http_url, server.grpc_url) == ("triton:9000", "triton:9001")
    assert server.metrics_url == "http://triton:9002/metrics"


DOCKER_INSTRUCTIONS = {"FROM", "RUN", "COPY", "ADD", "WORKDIR", "ENV", "EXPOSE", "CMD", "VOLUME",
                       "ARG", "LABEL", "ENTRYPOINT", "USER", "SHELL"}


def test_dockerfiles_parse_and_copy_what_exists():
    from tritonlab.serving import images

    for name in ("Dockerfile.triton", "Dockerfile.jupyter"):
        instructions = images.instructions(settings.ROOT / name)
        assert instructions[0][0] == "FROM", name
        for word, line in instructions:
            assert word in DOCKER_INSTRUCTIONS, f"{name}: not an instruction: {line[:60]}"
            if word == "COPY":
                for src in line.split()[:-1]:
                    assert (settings.ROOT / src).exists(), f"{name} copies missing {src}"
    triton = (settings.ROOT / "Dockerfile.triton").read_text()
    assert "FROM nvcr.io/nvidia/tritonserver:24.10-py3" in triton
    pins = (settings.ROOT / "requirements" / "triton-image.txt").read_text()
    assert "requirements/triton-image.txt" in triton
    assert "torch==2.7.1" in pins  # PyPI's CUDA 12.6 build: tests/test_images.py checks it
    assert "COPY model_repository" not in triton  # mounted, never copied


def test_compose_publishes_on_loopback_and_gives_gpus_to_triton():
    compose = yaml.safe_load((settings.ROOT / "compose.yaml").read_text())
    services = compose["services"]
    node = yaml.safe_load((settings.ROOT / "compose.node.yaml").read_text())["services"]
    for name, svc in node.items():
        assert svc.get("ports"), f"{name} publishes nothing on the node"
        for port in svc["ports"]:
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    devices = node["triton"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "./model_repository:/models" in services["triton"]["volumes"]
    assert any("restricted-api" in arg for arg in services["triton"]["command"])
    jupyter = services["jupyter"]
    assert "/var/run/docker.sock:/var/run/docker.sock" in jupyter["volumes"]
    assert jupyter["environment"]["TRITONLAB_MODE"] == "docker"
    assert jupyter["environment"]["TRITON_URL"] == "http://triton:8000"


def test_mode_detection(monkeypatch):
    monkeypatch.delenv("TRITONLAB_MODE", raising=False)
    assert choose_mode()[0] == "embedded"
    assert isinstance(get_server(), EmbeddedTriton)
    monkeypatch.setenv("TRITONLAB_MODE", "docker")
    assert isinstance(get_server(key="k"), DockerTriton)
    monkeypatch.setenv("TRITONLAB_MODE", "kubernetes")
    with pytest.raises(Exception, match="use 'embedded' or 'docker'"):
        choose_mode()


@pytest.mark.server
def test_restricted_model_control_refuses_a_load_without_the_key(tmp_path, repository):
    """The same restriction flags as the container, on the real server."""
    key = "course-key"
    server = EmbeddedTriton(repository, address=TritonAddress.free(), state_dir=tmp_path,
                            extra_args=restriction_flags(key))
    server.api_headers = {KEY_HEADER: key}
    try:
        server.start(models=["food_classifier"])
        base = f"http://{server.http_url}/v2/repository/models/food_classifier/load"
        refused = requests.post(base, json={}, timeout=30)
        assert refused.status_code == 403, refused.text
        # reading a config stays open: perf_analyzer reads it, and over gRPC sends no header
        config = requests.get(f"http://{server.http_url}/v2/models/food_classifier/config",
                              timeout=10)
        assert config.status_code == 200
        assert requests.post(base, json={}, headers={KEY_HEADER: key}, timeout=60).status_code \
            == 200
        assert server.reload_model("food_classifier") >= 0  # the package sends the key itself
        # over gRPC the key travels under Triton's prefixed name (GRPC_KEY_HEADER)
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            with pytest.raises(InferenceServerException, match=GRPC_KEY_HEADER):
                grpc.load_model("food_classifier", headers={KEY_HEADER.lower(): key})
            grpc.load_model("food_classifier", headers={GRPC_KEY_HEADER: key})
        finally:
            grpc.close()
        infer_ok = requests.get(f"http://{server.http_url}/v2/health/ready", timeout=5)
        assert infer_ok.status_code == 200  # health and inference stay open
    finally:
        server.stop()


def test_the_gpu_node_serves_the_same_warmed_up_configs():
    """The Triton container mounts the whole repository: each committed config and the warm-up
    files it names reach /models/<model>/ as they are here, and the image can decode HEIC."""
    compose = yaml.safe_load((settings.ROOT / "compose.yaml").read_text())
    assert "./model_repository:/models" in compose["services"]["triton"]["volumes"]
    assert "--model-repository=/models" in compose["services"]["triton"]["command"]
    for name, cfg in configs.course_configs().items():
        for sample in cfg.model_warmup:
            for spec in sample.inputs.values():
                assert (settings.MODEL_REPOSITORY / name / "warmup" / spec.input_data_file
                        ).is_file(), f"{name}: warm-up file {spec.input_data_file} missing"
    assert "pillow-heif==" in (settings.ROOT / "requirements" / "triton-image.txt").read_text()


GPU_DOCKER = """#!/bin/sh
# A stand-in docker CLI on the GPU node: `docker exec triton nvidia-smi ...` lists two P100s,
# or fails as Docker does while the container is stopped (STOPPED set).
echo "$*" >> "$DOCKER_CALLS"
if [ -n "$STOPPED" ]; then
  echo "Error response from daemon: container triton is not running" >&2; exit 1
fi
if [ "$1 $2 $3" = "exec triton nvidia-smi" ]; then
  printf 'Tesla P100-PCIE-16GB\\nTesla P100-PCIE-16GB\\n'; exit 0
fi
exit 1
"""


def test_in_docker_mode_the_gpus_are_counted_in_the_triton_container(tmp_path, monkeypatch):
    """The Jupyter container has no GPU and no nvidia-smi: counting there would turn every GPU
    variant into CPU instances (configs.for_this_machine) on a node with two P100s."""
    from tritonlab.serving import configs, devices

    (tmp_path / "docker").write_text(GPU_DOCKER)
    (tmp_path / "docker").chmod(0o755)
    calls = tmp_path / "calls"
    monkeypatch.setenv("DOCKER_CALLS", str(calls))
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setenv("TRITONLAB_MODE", "docker")
    devices.forget_gpus()
    try:
        monkeypatch.setenv("STOPPED", "1")  # not remembered: asked again once it runs
        assert devices.gpu_count() == 0
        monkeypatch.delenv("STOPPED")
        assert devices.gpu_names() == ("Tesla P100-PCIE-16GB",) * 2
        assert calls.read_text().splitlines()[-1] == \
            "exec triton nvidia-smi --query-gpu=name --format=csv,noheader"
        two_gpus = configs.classifier_config(
            instance_groups=[{"count": 1, "kind": "KIND_GPU", "gpus": [0]},
                             {"count": 1, "kind": "KIND_GPU", "gpus": [1]}])
        runnable, note = configs.for_this_machine(two_gpus, devices.gpu_count())
        assert not note and [g.kind for g in runnable.instance_group] == [
            two_gpus.instance_group[0].kind] * 2
        monkeypatch.setenv("TRITONLAB_MODE", "embedded")  # embedded here: no GPU, no docker ask
        devices.forget_gpus()
        assert devices.gpu_names() == ()
    finally:
        devices.forget_gpus()
