"""Triton replicas on the GPU node, up to Docker's boundary: what `docker` receives, what each
replica serves, how nginx's log maps back to replicas, and what `compare` and `explain` choose.

No Docker engine or GPU can be reached here: a stand-in `docker` on PATH records every call and
answers as Docker does for compose's `triton` container (its `docker inspect` JSON, below).
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tritonlab import settings
from tritonlab.measuring import replicas as measured
from tritonlab.measuring.results import REQUESTS, THROUGHPUT
from tritonlab.serving import ServerError, configs
from tritonlab.serving import docker_replicas as dr
from tritonlab.serving.docker import KEY_HEADER
from tritonlab.serving.replicas import LoadBalancer, Replicas, loopback_ports
from tritonlab.settings import TritonAddress

KEY = "k3y-from-the-nodes-env"
NODE = "/home/cc/tritonlab"  # where gpu_node_setup.sh puts the course on the node


def compose_command() -> list[str]:
    """compose.yaml's tritonserver command as the container runs it: the key expanded."""
    compose = yaml.safe_load((settings.ROOT / "compose.yaml").read_text())
    return [arg.replace("${TRITONLAB_API_KEY:?set TRITONLAB_API_KEY in .env}", KEY)
            for arg in compose["services"]["triton"]["command"]]


def triton_inspected() -> dict:
    """`docker inspect triton` for the container compose.yaml makes (Docker 27, compose v2),
    shortened to the fields that matter and a few that must not be copied."""
    command = compose_command()
    mounts = [(f"{NODE}/model_repository", "/models"), (NODE, "/workspace")]
    return {
        "Id": "4f1c0e5e3b2a",
        "Path": "/opt/nvidia/nvidia_entrypoint.sh",
        "Args": command,
        "State": {"Status": "running", "Running": True, "ExitCode": 0},
        "Image": "sha256:9b2a41c1f0d7",
        "Name": "/triton",
        "HostConfig": {
            "Binds": [f"{source}:{target}:rw" for source, target in mounts],
            "NetworkMode": "tritonlab",
            "PortBindings": {f"{p}/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(p)}]
                             for p in (8000, 8001, 8002)},
            "ShmSize": 1073741824,
            "DeviceRequests": [{"Driver": "nvidia", "Count": -1, "DeviceIDs": None,
                                "Capabilities": [["gpu"]], "Options": None}],
        },
        "Mounts": [{"Type": "bind", "Source": source, "Destination": target, "Mode": "rw",
                    "RW": True, "Propagation": "rprivate"} for source, target in mounts],
        "Config": {
            "Hostname": "4f1c0e5e3b2a",
            "ExposedPorts": {"8000/tcp": {}, "8001/tcp": {}, "8002/tcp": {}},
            "Env": ["PATH=/opt/tritonserver/bin:/usr/local/sbin:/usr/local/bin:/usr/bin:/bin",
                    "NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"],
            "Cmd": command,
            "Image": "tritonlab-triton",
            "Entrypoint": ["/opt/nvidia/nvidia_entrypoint.sh"],
            "Labels": {"com.docker.compose.project": "tritonlab",
                       "com.docker.compose.service": "triton"},
        },
        "NetworkSettings": {"Networks": {"tritonlab": {"Aliases": ["triton"],
                                                       "IPAddress": "172.18.0.2"}}},
    }


FAKE_DOCKER = '''#!{python}
"""A stand-in for the docker CLI: records each call (its arguments as a JSON list, one line
each) in $DOCKER_CALLS, keeps the containers it runs as files in $DOCKER_STATE, and answers
`docker inspect triton` with the JSON in $DOCKER_INSPECT, as Docker answers."""
import json, os, sys
from pathlib import Path

args = sys.argv[1:]
with open(os.environ["DOCKER_CALLS"], "a") as calls:
    calls.write(json.dumps(args) + "\\n")
state = Path(os.environ["DOCKER_STATE"])


def fail(message, code=1):
    sys.stderr.write(message + "\\n")
    sys.exit(code)


if args[0] == "inspect" and args[1] == "-f":
    name = args[3]
    if name != "triton" and not (state / name).exists():
        fail(f"Error: No such object: {{name}}")
    print({{"{{{{.State.Running}}}}": "true", "{{{{.State.ExitCode}}}}": "0",
           "{{{{.State.StartedAt}}}}": "2026-12-04T13:00:00Z"}}[args[2]])
elif args[0] == "inspect":
    if args[1] != "triton":
        print("[]")
        fail(f"Error: No such object: {{args[1]}}")
    print(Path(os.environ["DOCKER_INSPECT"]).read_text())
elif args[0] == "run":
    name = args[args.index("--name") + 1]
    if (state / name).exists():
        fail(f'docker: Error response from daemon: Conflict. The container name "/{{name}}" is '
             'already in use by container "0f3c9a". You have to remove (or rename) that '
             'container to be able to reuse that name.', 125)
    (state / name).write_text(json.dumps(args))  # created, even if it cannot start
    gpu = args[args.index("--gpus") + 1]
    if gpu in os.environ.get("DOCKER_MISSING_GPUS", "").split():
        fail("docker: Error response from daemon: failed to create task for container: "
             "nvidia-container-cli: device error: " + gpu.split("=")[1] + ": unknown device: "
             "unknown.", 125)
    print("7d2e9c41b0a8")
elif args[0] == "rm" and args[1] == "-f":
    for name in args[2:]:
        (state / name).unlink(missing_ok=True)
        print(name)
elif args[0] == "logs":
    if not (state / args[-1]).exists():
        fail(f"Error response from daemon: No such container: {{args[-1]}}")
    print("I1204 13:00:05.101 grpc_server.cc] Started GRPCInferenceService at 0.0.0.0:8001")
elif args[0] == "ps":
    print("\\n".join(p.name for p in sorted(state.iterdir())))
else:
    fail(f"the stand-in docker has no answer for: {{args}}")
'''


class Docker:
    """The stand-in docker's files: the calls it recorded, the containers it holds."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.calls_file = folder / "calls"
        self.state = folder / "containers"
        self.inspect_file = folder / "inspect.json"

    def answer(self, inspected: dict) -> None:
        """What `docker inspect triton` prints from now on."""
        self.inspect_file.write_text(json.dumps([inspected], indent=4))

    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.calls_file.read_text().splitlines()]

    def containers(self) -> list[str]:
        return sorted(p.name for p in self.state.iterdir())


@pytest.fixture()
def docker(tmp_path, monkeypatch) -> Docker:
    """A `docker` executable first on PATH, answering for compose's triton container."""
    folder = tmp_path / "docker"
    (folder / "bin").mkdir(parents=True)
    fake = Docker(folder)
    fake.state.mkdir()
    fake.calls_file.touch()
    fake.answer(triton_inspected())
    binary = folder / "bin" / "docker"
    binary.write_text(FAKE_DOCKER.format(python=sys.executable))
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", f"{binary.parent}:{Path(sys.executable).parent}:/usr/bin:/bin")
    monkeypatch.setenv("DOCKER_CALLS", str(fake.calls_file))
    monkeypatch.setenv("DOCKER_STATE", str(fake.state))
    monkeypatch.setenv("DOCKER_INSPECT", str(fake.inspect_file))
    monkeypatch.setenv("TRITONLAB_API_KEY", "another-key")  # the command's own key wins
    return fake


def expected_run(index: int) -> list[str]:
    return ["run", "--detach", "--name", f"triton-replica-{index}",
            "--label", f"tritonlab.replica={index}", "--network", "tritonlab",
            "--gpus", f"device={index}", "--shm-size", "1073741824",
            "--volume", f"{NODE}/model_repository:/models", "--volume", f"{NODE}:/workspace",
            "tritonlab-triton", *compose_command()]


# --- docker run ----------------------------------------------------------------------------------
def test_each_replica_is_run_as_compose_runs_triton_with_one_gpu(docker, tmp_path):
    assert dr.run_args(triton_inspected(), 1) == expected_run(1)
    replicas = dr.DockerReplicas(2, state_dir=tmp_path / "state")
    assert docker.calls() == [["inspect", "triton"]]
    replicas.launch()
    calls = docker.calls()[1:]
    assert calls == [["rm", "-f", "triton-replica-0"], expected_run(0),
                     ["rm", "-f", "triton-replica-1"], expected_run(1)]
    command = compose_command()
    for run in calls[1::2]:
        assert run[-len(command):] == command  # tritonserver's flags, key included, unchanged
        assert not any(arg.startswith(("-p", "--publish", "--env", "-e")) for arg in run)
    assert docker.containers() == ["triton-replica-0", "triton-replica-1"]
    # reached by name on the compose network, with the key the command restricts APIs by
    assert replicas.http_urls == ["triton-replica-0:8000", "triton-replica-1:8000"]
    assert replicas.grpc_urls == ["triton-replica-0:8001", "triton-replica-1:8001"]
    assert replicas.metrics_urls == ["http://triton-replica-0:8002/metrics",
                                     "http://triton-replica-1:8002/metrics"]
    assert all(s.api_headers == {KEY_HEADER: KEY} and s.is_running() for s in replicas)
    assert KEY not in " ".join(replicas.command_lines())  # fit to print in a notebook
    replicas.stop()
    last = docker.calls()[-4:]  # the replicas are stopped side by side: each its log, then rm
    for name in ("triton-replica-0", "triton-replica-1"):
        assert last.index(["logs", name]) < last.index(["rm", "-f", name])
    assert docker.containers() == [] and not replicas[0].is_running()
    kept = (tmp_path / "state" / "replica-1" / "triton.log").read_text()
    assert "Started GRPCInferenceService" in kept  # the log outlives the container


def test_read_only_mounts_stay_read_only(docker):
    inspected = triton_inspected()
    inspected["Mounts"][0]["RW"] = False
    assert f"{NODE}/model_repository:/models:ro" in dr.run_args(inspected, 0)
    del inspected["Mounts"]  # an older engine: HostConfig.Binds alone
    inspected["HostConfig"]["Binds"] = [f"{NODE}/model_repository:/models:ro,z",
                                        f"{NODE}:/workspace:rw"]
    args = dr.run_args(inspected, 0)
    assert args[args.index("tritonlab-triton") - 4:args.index("tritonlab-triton")] == [
        "--volume", f"{NODE}/model_repository:/models:ro", "--volume", f"{NODE}:/workspace"]


def test_a_container_on_the_default_bridge_is_refused(docker):
    inspected = triton_inspected()
    inspected["HostConfig"]["NetworkMode"] = "bridge"
    inspected["NetworkSettings"]["Networks"] = {"bridge": {"IPAddress": "172.17.0.2"}}
    with pytest.raises(ServerError, match="network 'tritonlab'"):
        dr.run_args(inspected, 0)


def test_in_the_hosts_network_each_replica_gets_ports_of_its_own_and_no_gpu_it_lacks(
        docker, tmp_path):
    """`make node-check`'s containers share the host's network and have no GPU: a replica runs
    there too, on free ports of 127.0.0.1 added to compose's command, without `--gpus`."""
    inspected = triton_inspected()
    inspected["HostConfig"]["NetworkMode"] = "host"
    inspected["NetworkSettings"]["Networks"] = {"host": {}}
    inspected["HostConfig"]["DeviceRequests"] = None
    assert not dr.has_gpus(inspected)
    ports = {"http": 41000, "grpc": 41001, "metrics": 41002}
    args = dr.run_args(inspected, 1, ports)
    assert args[args.index("--network") + 1] == "host" and "--gpus" not in args
    assert args[-3:] == ["--http-port=41000", "--grpc-port=41001", "--metrics-port=41002"]
    assert args[args.index("tritonlab-triton") + 1:-3] == compose_command()
    with pytest.raises(ServerError, match="ports of its own"):
        dr.run_args(inspected, 1)
    docker.answer(inspected)
    replicas = dr.DockerReplicas(2, state_dir=tmp_path / "state")
    hosts = {s.address.host for s in replicas}
    http = [s.address.http for s in replicas]
    assert hosts == {"127.0.0.1"} and len(set(http)) == 2 and not replicas.gpus
    for server in replicas:
        assert f"--http-port={server.address.http}" in server.run_args


def test_other_ports_in_the_command_are_the_replicas_ports(docker):
    command = [*compose_command(), "--http-port=9000", "--grpc-port", "9001"]
    assert dr.command_ports(command) == {"http": 9000, "grpc": 9001, "metrics": 8002}
    assert dr.restricted_key(compose_command()) == (KEY_HEADER, KEY)
    assert dr.restricted_key(["tritonserver", "--model-repository=/models"]) is None


def test_a_leftover_of_the_same_name_is_removed_before_run(docker, tmp_path):
    (docker.state / "triton-replica-0").write_text("left by a killed kernel")
    assert dr.leftovers() == ["triton-replica-0"]
    replicas = dr.DockerReplicas(1, state_dir=tmp_path / "state")
    replicas.launch()  # Docker would refuse the name in use: the stand-in does too
    calls = docker.calls()
    assert calls.index(["rm", "-f", "triton-replica-0"]) < calls.index(expected_run(0))
    assert json.loads((docker.state / "triton-replica-0").read_text()) == expected_run(0)
    assert dr.remove_leftovers() == ["triton-replica-0"] and docker.containers() == []


def test_every_replica_is_removed_when_replica_1_cannot_start(docker, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_MISSING_GPUS", "device=1")  # a node with one GPU
    replicas = dr.DockerReplicas(2, state_dir=tmp_path / "state")
    with pytest.raises(ServerError, match=r"replica 1 \(triton-replica-1, GPU 1\)") as raised:
        replicas.start(timeout=5)
    assert "unknown device" in str(raised.value) and "GPU 1" in str(raised.value)
    assert KEY not in str(raised.value)  # the command is quoted with its key hidden
    calls = docker.calls()
    failed = calls.index(expected_run(1))
    assert ["rm", "-f", "triton-replica-0"] in calls[failed:]
    assert ["rm", "-f", "triton-replica-1"] in calls[failed:]  # created, then failed to start
    assert docker.containers() == []


def test_a_missing_triton_container_says_how_to_create_it(docker, tmp_path):
    with pytest.raises(ServerError, match="gpu_node_setup.sh containers"):
        dr.DockerReplicas(2, source="tritn", state_dir=tmp_path)


# --- what each replica serves --------------------------------------------------------------------
def notebook_04_two_gpus():
    """Notebook 04's two-GPU config, as the notebook builds it."""
    return configs.classifier_config(
        instance_groups=[{"count": 2, "kind": "KIND_GPU", "gpus": [0]},
                         {"count": 2, "kind": "KIND_GPU", "gpus": [1]}], num_threads=1)


def gpu_groups(cfg) -> list[tuple[str, int, list[int]]]:
    return [(configs.mc.ModelInstanceGroup.Kind.Name(g.kind), g.count, list(g.gpus))
            for g in cfg.instance_group]


def test_gpu_groups_are_remapped_to_each_replicas_device_0(docker, tmp_path):
    two_gpus = notebook_04_two_gpus()
    assert gpu_groups(dr.replica_config(two_gpus, 2)) == [("KIND_GPU", 2, [0])]
    assert gpu_groups(dr.gpu_share(two_gpus, 1)) == [("KIND_GPU", 2, [0])]  # GPU 1's pair
    spread = configs.classifier_config(instance_groups=[
        {"count": 3, "kind": "KIND_GPU", "gpus": [0, 1]}])
    assert gpu_groups(dr.replica_config(spread, 2)) == [("KIND_GPU", 3, [0])]
    anywhere = configs.classifier_config(instances=1, kind="KIND_GPU")  # no gpus: every GPU
    assert gpu_groups(dr.replica_config(anywhere, 2)) == [("KIND_GPU", 1, [0])]
    cpu = configs.classifier_config(instances=2, num_threads=2)
    assert dr.replica_config(cpu, 2) == cpu
    with pytest.raises(ValueError, match="different instances on GPUs 0 to 1"):
        dr.replica_config(configs.classifier_config(kind="KIND_GPU", gpus=[0]), 2)
    with pytest.raises(ValueError, match=r"GPU\(s\) \[1\]"):
        dr.replica_config(two_gpus, 1)
    # compare's GPU-node setups: the variant spread as notebook 04 spreads it, on both
    fastest_on_two = configs.on_gpus(configs.fastest_classifier_config(), [0, 1])
    assert gpu_groups(fastest_on_two) == [("KIND_GPU", 2, [0]), ("KIND_GPU", 2, [1])]
    assert fastest_on_two.parameters["runtime"].string_value == "onnxruntime"
    assert gpu_groups(configs.on_gpus(two_gpus, [0, 1])) == gpu_groups(two_gpus)  # placed
    assert measured.one_triton_plan(fastest_on_two) == (
        "1 Triton x 4 instance(s) on 2 GPU(s): 2 on GPU 0, 2 on GPU 1")
    replicas = dr.DockerReplicas(2, settings.MODEL_REPOSITORY, tmp_path)
    assert replicas.plan(fastest_on_two) == (
        "2 replica(s) x 2 instance(s) on a GPU of its own = 4 instances on 2 GPU(s) (replica i "
        "has the node's GPU i)")
    assert replicas.plan(configs.classifier_config(num_threads=2), cores=2) == (
        "2 replica(s) x 1 instance(s) x 1 thread(s) = 2 threads on 2 cores, which the "
        "replicas' containers share")
    assert docker.containers() == []  # plans start nothing


# --- nginx in front of containers ----------------------------------------------------------------
def test_nginx_upstreams_are_the_replicas_names_on_the_network(docker, tmp_path):
    replicas = dr.DockerReplicas(2, state_dir=tmp_path / "state")
    lb = LoadBalancer(replicas, tmp_path / "nginx")
    text = lb.config_text()
    for i in range(2):
        assert f"server triton-replica-{i}:8000;" in text
        assert f"server triton-replica-{i}:8001;" in text
    assert lb.mode == "nginx (round_robin) over 2 docker Triton replicas"
    assert loopback_ports(replicas) == set()  # other hosts hold none of this machine's ports
    embedded = Replicas(2, tmp_path, tmp_path / "embedded")
    assert loopback_ports(embedded) == {p for s in embedded for p in
                                        (s.address.http, s.address.grpc, s.address.metrics)}


def test_an_upstream_address_in_the_access_log_maps_back_to_its_replica(docker, tmp_path):
    replicas = dr.DockerReplicas(2, state_dir=tmp_path / "state")
    # This machine resolves 'localhost', not the containers' names: the replicas get a name
    # that resolves here, on ports of their own (on the node, each name has its own address).
    for server, port in zip(replicas, (9000, 9003)):
        server.address = TritonAddress("localhost", port, port + 1, port + 2)
    lb = LoadBalancer(replicas, tmp_path / "nginx")
    lb.folder.mkdir(parents=True)
    line = ('2026-12-04T13:43:19+00:00 listener=41000 "POST /v2/models/food_classifier/infer '
            'HTTP/1.1" 200 upstream="{}" upstream_status="200" request_time=0.019')
    lb.access_log.write_text("\n".join(line.format(upstream) for upstream in (
        "127.0.0.1:9000", "127.0.0.1:9004", "127.0.0.1:9003, 127.0.0.1:9000",
        "localhost:9003", "127.0.0.1:9100", "-")) + "\n")
    assert [e["replica"] for e in lb.access_entries()] == [0, 1, 0, 1, None, None]
    assert lb.resolve_upstreams()["127.0.0.1:9004"] == 1


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def do_GET(self):
        # header names are case-insensitive (HTTP): kept lower-cased to compare
        _Recorder.seen.append({k.lower(): v for k, v in self.headers.items()})
        body = b'{"name": "food_classifier", "max_batch_size": 16}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_):
        pass


def test_the_balancer_asks_for_a_config_with_the_replicas_key(docker, tmp_path):
    """The balancer sends the replicas' key with its own calls (model control needs it)."""
    replicas = dr.DockerReplicas(2, state_dir=tmp_path / "state")
    lb = LoadBalancer(replicas, tmp_path / "nginx")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        lb.http_port = server.server_address[1]  # this server stands where nginx listens
        assert lb.model_config("food_classifier")["max_batch_size"] == 16
    finally:
        server.shutdown()
    assert _Recorder.seen[-1].get(KEY_HEADER.lower()) == KEY


# --- compare and explain -------------------------------------------------------------------------
def test_compare_measures_the_setups_of_this_machines_mode(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITONLAB_MODE", "docker")
    assert measured.setups_for() == (measured.ONE_TWO_GPUS, measured.TWO_ONE_GPU)
    assert measured.setups_for() == ("1 Triton, 2 GPUs", "2 replicas, 1 GPU each, behind nginx")
    assert measured.setups_for([measured.TWO_ONE_GPU]) == (measured.TWO_ONE_GPU,)
    with pytest.raises(ValueError, match="in docker mode choose from"):
        measured.setups_for([measured.TWO])
    with pytest.raises(ValueError, match="in docker mode choose from"):  # before anything starts
        measured.compare(tmp_path, setups=(measured.ONE,), state_dir=tmp_path / "state")
    assert not (tmp_path / "state").exists()
    monkeypatch.setenv("TRITONLAB_MODE", "embedded")
    assert measured.setups_for() == (measured.ONE, measured.ONE_BEHIND, measured.TWO)
    with pytest.raises(ValueError, match="in embedded mode choose from"):
        measured.setups_for([measured.ONE_TWO_GPUS])
    monkeypatch.delenv("TRITONLAB_MODE")
    assert measured.setups_for() == measured.MODE_SETUPS["embedded"]


def gpu_table(two: float, two_requests: int = 800) -> pd.DataFrame:
    rows = [{"setup": setup, "replicas": n, "protocol": "grpc", "concurrency": 8,
             THROUGHPUT: thr, "p50 latency (ms)": 20.0, "p95 latency (ms)": p95,
             "p99 latency (ms)": 40.0, "mean batch size": batch, REQUESTS: count}
            for setup, n, thr, p95, batch, count in (
                (measured.ONE_TWO_GPUS, 1, 400.0, 31.0, 3.2, 900),
                (measured.TWO_ONE_GPU, 2, two, 27.5, 1.9, two_requests))]
    df = pd.DataFrame(rows)
    df.attrs.update(cores=48, mode="docker", gpus=[0, 1], plans={
        measured.ONE_TWO_GPUS: "1 Triton x 4 instance(s) on 2 GPU(s): 2 on GPU 0, 2 on GPU 1"})
    return df


def test_explain_judges_two_replicas_with_one_gpu_each_against_one_triton_with_both():
    text = measured.explain(gpu_table(600.0))
    assert text.startswith("Two replicas with one GPU each gave 1.50x the throughput of one "
                           "Triton with both GPUs at the one level measured: more throughput.")
    assert ("GRPC at concurrency 8: 600 infer/s with two replicas (one GPU each) behind nginx "
            "against 400 with one Triton on both GPUs (1.50x: more throughput); p95 27.5 ms "
            "against 31.0 ms; mean batch 1.9 against 3.2 images.") in text
    assert "Each replica has its own GPU" in text and "node's 48 cores" in text
    assert "same cores" not in text and "1 Triton, 2 GPUs: 1 Triton x 4 instance(s)" in text
    assert "1.05x: no clear change" in measured.explain(gpu_table(420.0))
    assert "0.75x: less throughput" in measured.explain(gpu_table(300.0))
    few = measured.explain(gpu_table(600.0, two_requests=12))
    assert few.startswith("No level was measured") and "1.50x: too few requests" in few


def test_explain_says_cpu_numbers_where_docker_gave_the_containers_no_gpu():
    """`make node-check` runs the GPU node's setups on a machine without GPUs: the words name
    containers and CPU instances, never GPUs that were not there."""
    table = gpu_table(600.0)
    table.attrs["gpus_present"] = 0
    text = measured.explain(table)
    assert text.startswith("Two replica containers gave 1.50x the throughput of one Triton "
                           "container")
    assert "with two replica containers behind nginx against 400 with one Triton container" \
        in text
    assert "Docker gave these containers no GPU" in text and "CPU numbers" in text
    assert "Each replica has its own GPU" not in text and "one GPU each" not in text.split(
        "1 Triton, 2 GPUs:")[0]
