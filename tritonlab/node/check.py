"""`make node-check`: the GPU node's container path, run end to end on this machine.

What a student meets on the node, run for real in Docker, on a machine with no GPU and no
registry but Debian's archive and PyPI:

1. a Docker engine (`engine`: the one running, else Debian's, started here and stopped after);
2. the base images of both Dockerfiles, pulled, else stand-ins built locally (`standins`);
3. gpu_node_setup.sh's `images` and `containers` steps, as notebook 00 runs them on the node:
   both images built from the project's own Dockerfile.triton and Dockerfile.jupyter, the
   weights and configs prepared in the Jupyter container, both containers started from the
   project's own compose.yaml. The containers share this machine's network
   (compose.host-network.yaml instead of the node's compose.node.yaml), so every request the
   check sends goes to 127.0.0.1; what the node would publish is read from `compose config`;
4. Triton's restricted model-repository API (refused without the key, accepted with it, over
   HTTP and gRPC) and the FastAPI endpoint answering an upload, and refusing a bad one;
5. in the Jupyter container, in Docker mode, what a student runs there: the notebooks (01 to 11
   and A1, quick mode) and `make handin`;
6. both containers healthy, then the classifier's baseline measured in the Triton container and
   on the embedded server of this machine, with the same perf_analyzer settings;
7. everything it started removed again: containers, network, and the Docker daemon if it
   started one.

One report, `build/node-check/report.md` and `report.json`. `--short` (CI) runs steps 1 to 4,
notebook 01 and a restart of the Triton container through DockerTriton (notebook 02's restart
cell), then step 7. `--images-only` runs steps 1 to 3 alone, with the standard library only:
CI builds the images while the course's environment installs, and the check after it finds them
in Docker's cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .. import settings
from .engine import DockerEngine, EngineError, run
from .standins import BaseImage, base_images, ensure_base, image_id

#: The notebooks a student runs in the Jupyter container (00 runs on Chameleon's JupyterHub).
SHORT_NOTEBOOKS = ("01_model_repository_and_first_request.ipynb",)
#: The ports the containers listen on, in the host's network during the check (compose.yaml).
PORTS = {"Triton HTTP": 8000, "Triton gRPC": 8001, "Triton metrics": 8002, "API": 8080,
         "JupyterLab": 8888}
#: Seconds the containers may take to answer after `compose up` (the Triton image loads every
#: model, BLIP included; a first start on 2 cores takes about a minute).
READY_TIMEOUT_S = 600
#: Seconds one notebook may run in the container: the cell limit of quick mode (lab.py: 15
#: minutes a cell) is what stops a stuck notebook; this only bounds a hung `docker exec`.
NOTEBOOK_TIMEOUT_S = 3600
CONTAINERS = ("triton", "jupyter")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Step:
    """One step of the check, as the report shows it."""

    name: str
    status: str = "not run"        # passed, failed, skipped, not run
    seconds: float = 0.0
    detail: str = ""
    data: dict = field(default_factory=dict)


class CheckFailed(RuntimeError):
    """A step failed; the check goes on to clean up, and the report says which and why."""


def failure(proc, log_path: Path, what: str = "", lines: int = 20) -> CheckFailed:
    """CheckFailed for a command that exited non-zero: its exit code, its log, and its last
    lines (colours and progress bars left out)."""
    text = ANSI.sub("", proc.stdout + proc.stderr)
    tail = [ln for ln in text.splitlines() if ln.strip() and "%|" not in ln][-lines:]
    return CheckFailed(f"{what + ': ' if what else ''}exit {proc.returncode}; log {log_path}\n"
                       + "\n".join(tail))


@dataclass
class NodeCheck:
    """The check (see the module's text). `out` holds the report, logs and executed notebooks;
    `short` runs CI's slice."""

    root: Path = settings.ROOT
    out: Path = settings.ROOT / "build" / "node-check"
    short: bool = False
    images_only: bool = False
    notebooks: list[str] | None = None
    steps: list[Step] = field(default_factory=list)
    key: str = field(default_factory=lambda: secrets.token_hex(16))

    def __post_init__(self) -> None:
        self.engine = DockerEngine(self.out / "state")
        self.bases: list[BaseImage] = []
        self.replaced: list[str] = []  # image IDs present before the builds
        self.began = time.monotonic()
        self.started_at = datetime.now(timezone.utc)

    # --- running steps -----------------------------------------------------------------------
    def step(self, name: str, call: Callable[[Step], str | None], required: bool = True) -> Step:
        """Run `call(step)`, timed; its return value is the step's detail. A failure is kept in
        the report; a required step's failure stops the check (CheckFailed)."""
        step = Step(name)
        self.steps.append(step)
        print(f"=== {name}", flush=True)
        began = time.monotonic()
        try:
            step.detail = call(step) or step.detail
            step.status = "passed"
        except Exception as exc:  # every failure is reported, not only the expected kinds
            step.status = "failed"
            step.detail = f"{type(exc).__name__}: {exc}" if not isinstance(
                exc, (EngineError, CheckFailed)) else str(exc)
            if not isinstance(exc, (EngineError, CheckFailed)):
                step.data["traceback"] = traceback.format_exc()
        step.seconds = time.monotonic() - began
        print(f"=== {name}: {step.status} in {step.seconds:.0f} s"
              + (f"\n{step.detail}" if step.status == "failed" or step.detail else ""),
              flush=True)
        self.write_report()
        if step.status == "failed" and required:
            raise CheckFailed(f"{name} failed")
        return step

    def environment(self) -> dict[str, str]:
        """What compose and the node script read: the project, its files (the host's network,
        not the node's GPUs), the key, loopback addresses."""
        return dict(os.environ, COMPOSE_PROJECT_NAME="tritonlab",
                    COMPOSE_FILE="compose.yaml:compose.host-network.yaml",
                    TRITONLAB_API_KEY=self.key, TRITONLAB_BIND_ADDRESS="127.0.0.1")

    def script(self, step_name: str, timeout: float) -> str:
        """gpu_node_setup.sh's step `step_name`, as notebook 00 runs it on the node; its output
        is kept in logs/<step>.log. CheckFailed with its last lines when it fails."""
        log_path = self.out / "logs" / f"setup-{step_name}.log"
        proc = run(["bash", str(self.root / "tritonlab" / "gpu_node_setup.sh"), step_name],
                   timeout=timeout, check=False, env=self.environment(), cwd=self.root)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise failure(proc, log_path, f"gpu_node_setup.sh {step_name} failed")
        return proc.stdout

    def compose(self, *args: str, timeout: float = 600, check: bool = True):
        return run([*self.engine.compose(), *args], timeout=timeout, check=check,
                   env=self.environment(), cwd=self.root)

    def docker(self, *args: str, timeout: float = 600, check: bool = True):
        return run([self.engine.docker, *args], timeout=timeout, check=check)

    def in_jupyter(self, command: list[str], timeout: float, log_name: str,
                   env: dict[str, str] | None = None):
        """`docker exec` a command in the Jupyter container (cwd /workspace, the course folder),
        its output kept in logs/<log_name>.log. The command runs under `timeout` inside the
        container: ending a `docker exec` client leaves its process running there."""
        env_args = [arg for k, v in (env or {}).items() for arg in ("-e", f"{k}={v}")]
        proc = run([self.engine.docker, "exec", *env_args, "jupyter",
                    "timeout", "-k", "30", str(int(timeout)), *command],
                   timeout=timeout + 60, check=False)
        log_path = self.out / "logs" / f"{log_name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(proc.stdout + proc.stderr)
        return proc, log_path

    # --- the steps ---------------------------------------------------------------------------
    def _engine(self, step: Step) -> str:
        step.data.update(self.engine.ensure())
        d = step.data
        return (f"Docker {d['server']} (client {d['client']}, {d['storage driver']}), "
                f"{d['compose']} {d['compose version']}; daemon {d['daemon']}"
                + (f"; installed {', '.join(d['installed here'])}" if d["installed here"] else ""))

    def _ports(self, step: Step) -> str:
        from ..serving.embedded import port_owner

        held = {name: (port, port_owner(port)) for name, port in PORTS.items()}
        busy = {name: f"{port} held by {owner}" for name, (port, owner) in held.items() if owner}
        leftover = self.docker("ps", "-a", "--filter", "name=^/?(triton|jupyter)$", "--format",
                               "{{.Names}}", check=False).stdout.split()
        if busy and not leftover:
            raise CheckFailed("The containers share this machine's network and need these "
                              f"ports free: {'; '.join(f'{k} {v}' for k, v in busy.items())}.\n"
                              "Stop what holds them (`make stop` for a `make serve`), then run "
                              "`make node-check` again.")
        if leftover:
            self.compose("down", "--remove-orphans", timeout=300, check=False)
            self.docker("rm", "-f", *leftover, check=False)
            return f"removed containers an earlier check left: {', '.join(leftover)}"
        return "free: " + ", ".join(f"{port} ({name})" for name, port in PORTS.items())

    def image_ids(self) -> list[str]:
        """The local image IDs of the bases and of both images (those present)."""
        names = [*base_images(), *(f"tritonlab-{c}" for c in CONTAINERS)]
        return [i for i in (image_id(self.engine, name) for name in names) if i]

    def _bases(self, step: Step) -> str:
        # the versions a rebuild replaces, removed once nothing builds on them (`_images`)
        self.replaced = self.image_ids()
        # side by side after the shared Debian root (`standins.debian_root` builds it once):
        # after the root, both stand-ins took 46 s so, against 64 s one after the other
        with ThreadPoolExecutor(max_workers=2) as pool:
            self.bases = list(pool.map(lambda name: ensure_base(self.engine, name),
                                       base_images()))
        step.data["bases"] = [b.as_dict() for b in self.bases]
        return "; ".join(f"{b.name}: {b.used}" for b in self.bases)

    def _images(self, step: Step) -> str:
        self.script("images", timeout=3600)
        self.remove_replaced(step)
        step.data["images"] = {}
        for service in CONTAINERS:
            image = f"tritonlab-{service}"
            info = json.loads(self.docker("image", "inspect", image, timeout=60).stdout)[0]
            step.data["images"][image] = {"size (GB)": round(info["Size"] / 1e9, 2),
                                          "id": info["Id"], "created": info["Created"]}
        return "; ".join(f"{name} {i['size (GB)']} GB" for name, i in step.data["images"].items())

    def remove_replaced(self, step: Step) -> None:
        """Remove the image versions this run's builds replaced (several GB each), images first,
        then their bases; one still in use by a container stays."""
        current = set(self.image_ids())
        stale = [i for i in self.replaced if i not in current]
        removed = [i for i in stale
                   if self.docker("rmi", i, timeout=300, check=False).returncode == 0]
        if removed:
            step.data["replaced images removed"] = removed

    def _containers(self, step: Step) -> str:
        self.script("containers", timeout=1800)
        step.data["ready (s)"] = self.wait_ready()
        return f"both containers answer on 127.0.0.1 after {step.data['ready (s)']:.0f} s"

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        """Seconds until Triton is ready and the API's /health says so; CheckFailed with both
        containers' last log lines otherwise."""
        import requests

        began = time.monotonic()
        while time.monotonic() - began < timeout:
            try:
                if (requests.get("http://127.0.0.1:8000/v2/health/ready", timeout=5).ok
                        and requests.get("http://127.0.0.1:8080/health", timeout=10).ok):
                    return time.monotonic() - began
            except requests.RequestException:
                pass
            states = self.docker("inspect", "-f", "{{.Name}} {{.State.Status}}", *CONTAINERS,
                                 check=False).stdout.split("\n")
            if any(s and not s.endswith("running") for s in states):
                break
            time.sleep(3)
        tails = {c: self.docker("logs", "--tail", "15", c, check=False) for c in CONTAINERS}
        logs = "\n".join(f"--- {c}:\n{proc.stdout}{proc.stderr}" for c, proc in tails.items())
        raise CheckFailed(f"Triton and the API did not both answer within {timeout:.0f} s "
                          f"(container states: {'; '.join(s for s in states if s)}).\n{logs}")

    def _node_network(self, step: Step) -> str:
        """What the node would get, read from compose's own resolution of compose.yaml with
        compose.node.yaml, and what the check's containers got (docker inspect)."""
        import yaml

        env = dict(self.environment(), COMPOSE_FILE="compose.yaml:compose.node.yaml")
        env.pop("TRITONLAB_BIND_ADDRESS")
        text = run([*self.engine.compose(), "config"], timeout=120, env=env, cwd=self.root).stdout
        config = yaml.safe_load(text)
        services = config["services"]
        problems, published = [], []
        for name, service in services.items():
            if service.get("network_mode"):
                problems.append(f"{name} has network_mode {service['network_mode']} on the node")
            for port in service.get("ports", []):
                number, host_ip = port_binding(port)
                published.append(f"{name} {host_ip}:{number}")
                if host_ip != "127.0.0.1":
                    problems.append(f"{name} publishes {number} on {host_ip or 'every address'}")
        networks = config.get("networks", {})
        if (networks.get("default") or {}).get("name") != "tritonlab":
            problems.append("the default network is not named tritonlab")
        devices = (((services["triton"].get("deploy") or {}).get("resources") or {})
                   .get("reservations") or {}).get("devices") or []
        if not any("gpu" in d.get("capabilities", []) for d in devices):
            problems.append("the triton service reserves no GPU with compose.node.yaml")
        if any("0.0.0.0" not in arg for arg in services["triton"]["command"]
               if arg.startswith("--http-address")):
            problems.append("Triton would not listen on the container's own interfaces")
        inspected = json.loads(self.docker("inspect", *CONTAINERS, timeout=60).stdout)
        here = {c["Name"].lstrip("/"): c["HostConfig"]["NetworkMode"] for c in inspected}
        step.data.update(published=published, networks=networks, gpu_devices=devices,
                         here=here)
        if problems:
            raise CheckFailed("; ".join(problems))
        return (f"on the node: {', '.join(published)} on the bridge network tritonlab, all GPUs "
                f"to triton; here: {', '.join(f'{k} in the {v} network' for k, v in here.items())}")

    def _key(self, step: Step) -> str:
        """The model-repository API refuses a load without the key and takes one with it."""
        import requests
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        from ..serving.docker import GRPC_KEY_HEADER, KEY_HEADER

        url = "http://127.0.0.1:8000/v2/repository/models/food_classifier/load"
        without = requests.post(url, json={}, timeout=60)
        wrong = requests.post(url, json={}, headers={KEY_HEADER: "not-the-key"}, timeout=60)
        with_key = requests.post(url, json={}, headers={KEY_HEADER: self.key}, timeout=300)
        client = grpcclient.InferenceServerClient("127.0.0.1:8001")
        try:
            try:
                client.load_model("food_classifier")
                grpc_without = "accepted"
            except InferenceServerException as exc:
                grpc_without = f"refused ({exc.status()})"
            client.load_model("food_classifier", headers={GRPC_KEY_HEADER: self.key})
            grpc_with = "accepted"
        finally:
            client.close()
        infer_open = requests.get("http://127.0.0.1:8000/v2/models/food_classifier/ready",
                                  timeout=10).status_code
        step.data.update({"HTTP without key": without.status_code,
                          "HTTP wrong key": wrong.status_code,
                          "HTTP with key": with_key.status_code, "gRPC without key": grpc_without,
                          "gRPC with key": grpc_with, "model ready (no key)": infer_open})
        if (without.status_code, wrong.status_code, with_key.status_code) != (403, 403, 200) \
                or grpc_without == "accepted" or infer_open != 200:
            raise CheckFailed(f"the restricted API answered {step.data}")
        return (f"load without the key: HTTP {without.status_code}, gRPC {grpc_without}; "
                f"with a wrong key: HTTP {wrong.status_code}; with the key: HTTP "
                f"{with_key.status_code}, gRPC {grpc_with}; health and inference stay open")

    def _api(self, step: Step) -> str:
        """The FastAPI endpoint in the Jupyter container answers an upload, refuses a file
        that is not an image (only that request), and answers again."""
        import requests

        from ..assets import samples

        image = samples.sample_images()[0]
        url = "http://127.0.0.1:8080/predict"
        began = time.monotonic()
        good = requests.post(url, files={"file": (image.name, image.read_bytes(), "image/jpeg")},
                             timeout=300)
        seconds = time.monotonic() - began
        bad = requests.post(url, files={"file": ("notes.txt", b"not a photo", "text/plain")},
                            timeout=120)
        again = requests.post(url, files={"file": (image.name, image.read_bytes(),
                                                   "image/jpeg")}, timeout=300)
        step.data.update({"upload": good.status_code, "answer": _json(good),
                          "seconds": round(seconds, 2), "not an image": bad.status_code,
                          "its detail": _json(bad), "upload again": again.status_code})
        answer = _json(good)
        if good.status_code != 200 or not {"label", "caption"} <= set(answer) \
                or not 400 <= bad.status_code < 500 or again.status_code != 200:
            raise CheckFailed(f"POST /predict: {step.data}")
        return (f"{image.name}: {answer['label']!r}, caption {answer['caption']!r} in "
                f"{seconds:.1f} s; a text file: HTTP {bad.status_code}; the next upload: HTTP "
                f"{again.status_code}")

    def lab_env(self) -> dict[str, str]:
        """Where the notebooks in the container write (the course folder is mounted): their
        executed copies and figures, and their results, apart from this machine's own runs."""
        return {"TRITONLAB_OUTPUT_DIR": "/workspace/build/node-check/lab",
                "TRITONLAB_RESULTS_DIR": "/workspace/build/node-check/results"}

    def _notebook(self, name: str) -> Callable[[Step], str]:
        def call(step: Step) -> str:
            proc, log_path = self.in_jupyter(
                ["python", "-m", "tritonlab", "lab", f"notebooks/{name}"], NOTEBOOK_TIMEOUT_S,
                f"notebook-{Path(name).stem}", env=self.lab_env())
            step.data["log"] = str(log_path.relative_to(self.root))
            step.data["executed copy"] = f"build/node-check/lab/{name}"
            if proc.returncode != 0:
                raise failure(proc, log_path, lines=25)
            return f"executed copy: build/node-check/lab/{name}"
        return call

    def _restart(self, step: Step) -> str:
        """Notebook 02's restart cell in the Jupyter container: the baseline config written
        and the Triton container restarted through DockerTriton."""
        code = ("from tritonlab.serving import configs, deploy, get_server\n"
                "server = get_server()\n"
                "server.start(['food_classifier'])\n"
                "seconds = deploy.deploy(server, configs.classifier_config(), how='restart')\n"
                "print(f'RESTARTED {seconds:.1f}')\n")
        proc, log_path = self.in_jupyter(["python", "-c", code], 900, "restart")
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESTARTED")]
        if proc.returncode != 0 or not line:
            raise failure(proc, log_path)
        step.data["seconds to ready"] = float(line[0].split()[1])
        return f"docker stop + start of the Triton container, ready again in {line[0].split()[1]} s"

    def _handin(self, step: Step) -> str:
        proc, log_path = self.in_jupyter(["make", "handin"], 900, "handin", env=self.lab_env())
        if proc.returncode != 0:
            raise failure(proc, log_path)
        archives = sorted((self.out / "handin").glob("*.zip")) or sorted(
            (self.root / "build" / "node-check").rglob("handin-*.zip"))
        step.data["archive"] = str(archives[-1].relative_to(self.root)) if archives else ""
        summary = [ln for ln in proc.stdout.splitlines() if ln.strip()]
        start = next((i for i, ln in enumerate(summary) if ln.startswith("Hand-in written")), 0)
        return "\n".join(summary[start:start + 8])

    def _healthy(self, step: Step) -> str:
        self.compose("up", "-d", timeout=600)
        step.data["ready (s)"] = self.wait_ready()
        began = time.monotonic()
        while time.monotonic() - began < 300:
            health = dict(line.split() for line in self.docker(
                "inspect", "-f", "{{.Name}} {{if .State.Health}}{{.State.Health.Status}}"
                "{{else}}none{{end}}", *CONTAINERS).stdout.replace("/", "").splitlines())
            if all(v == "healthy" for v in health.values()) or any(
                    v == "unhealthy" for v in health.values()):
                break
            time.sleep(5)
        step.data["health"] = health
        step.data["ps"] = self.compose("ps", timeout=60).stdout
        if any(v != "healthy" for v in health.values()):
            raise CheckFailed(f"health: {health}\n{step.data['ps']}")
        return (", ".join(f"{name} {state}" for name, state in health.items())
                + f" (after `compose up -d`: ready in {step.data['ready (s)']:.0f} s)\n"
                + step.data["ps"].rstrip())

    def _baseline(self, step: Step) -> str:
        """The classifier's baseline config measured in the Triton container (perf_analyzer in
        the Jupyter container) and on this machine's embedded server, the same settings."""
        out = "/workspace/build/node-check/baseline-docker.json"
        proc, log_path = self.in_jupyter(["python", "-m", "tritonlab.node.check", "measure",
                                          "--out", out], 1800, "baseline-docker",
                                         env={"TRITONLAB_QUICK": "1"})
        if proc.returncode != 0:
            raise failure(proc, log_path, "in the container")
        docker_rows = json.loads((self.out / "baseline-docker.json").read_text())
        # the containers stay up but idle while the embedded server is measured
        embedded_rows = measure_embedded(self.out / "baseline-embedded.json")
        step.data.update(docker=docker_rows, embedded=embedded_rows)
        return compare_baselines(docker_rows, embedded_rows)

    def _clean_up(self, step: Step) -> str:
        """compose down, replica containers removed, the daemon stopped if this check started
        it; CheckFailed naming what is left behind."""
        done, left = [], []
        if self.engine.answers():
            self.compose("down", "--remove-orphans", timeout=300, check=False)
            replicas = self.docker("ps", "-aq", "--filter", "label=tritonlab.replica",
                                   check=False).stdout.split()
            if replicas:
                self.docker("rm", "-f", *replicas, check=False)
                done.append(f"{len(replicas)} replica container(s) removed")
            left = self.docker("ps", "-a", "--filter", "name=^/?(triton|jupyter)$", "--format",
                               "{{.Names}}", check=False).stdout.split()
            left += [f"network {n}" for n in self.docker(
                "network", "ls", "--filter", "name=^tritonlab$", "--format", "{{.Name}}",
                check=False).stdout.split()]
            done.append("compose down: containers and network tritonlab removed")
        if self.engine.stop():
            done.append("the Docker daemon this check started is stopped")
        else:
            done.append("the Docker daemon was running before the check: left running")
        if left:
            raise CheckFailed(f"left behind after compose down: {', '.join(left)}")
        return "; ".join(done)

    # --- the whole check ---------------------------------------------------------------------
    def planned_notebooks(self) -> list[str]:
        from ..lab import course_notebooks

        if self.notebooks:
            return list(self.notebooks)
        if self.short:
            return list(SHORT_NOTEBOOKS)
        return [p.name for p in course_notebooks(self.root / "notebooks")]

    def run(self) -> int:
        """Every step in order, then the clean-up whatever happened; returns the number of
        failed steps (0: passed)."""
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            self.step("Docker engine", self._engine)
            self.step("base images", self._bases)
            self.step("images (gpu_node_setup.sh images)", self._images)
            if not self.images_only:
                self.run_containers()
        except CheckFailed:
            pass
        except KeyboardInterrupt:
            print("interrupted: cleaning up", flush=True)
            self.steps.append(Step("interrupted", "failed", detail="Ctrl-C"))
        finally:
            self.step("clean-up", self._clean_up, required=False)
            self.write_report()
        return self.finish()

    def run_containers(self) -> None:
        """The steps from `compose up` on (see the module's text)."""
        self.step("host ports", self._ports)
        self.step("containers (gpu_node_setup.sh containers)", self._containers)
        self.step("what the node publishes", self._node_network, required=False)
        self.step("model-repository API and its key", self._key, required=False)
        self.step("FastAPI endpoint", self._api, required=False)
        for name in self.planned_notebooks():
            self.step(f"notebook {name}", self._notebook(name), required=False)
        if self.short:
            self.step("restart through DockerTriton (notebook 02's cell)", self._restart,
                      required=False)
        else:
            self.step("make handin in the Jupyter container", self._handin, required=False)
        self.step("both containers healthy", self._healthy, required=False)
        if not self.short:
            self.step("baseline: the container against the embedded server", self._baseline,
                      required=False)

    def finish(self) -> int:
        """Print where the report is and what failed; the number of failed steps."""
        failed = [s for s in self.steps if s.status == "failed"]
        print(f"\nreport: {self.out / 'report.md'}\n"
              + (f"{len(failed)} step(s) failed: " + ", ".join(s.name for s in failed)
                 if failed else "every step passed"), flush=True)
        return len(failed)

    # --- the report --------------------------------------------------------------------------
    def summary(self) -> dict:
        kind = "images only" if self.images_only else "short (CI)" if self.short else "full"
        return {"check": kind, "commit": _commit(self.root),
                "started": self.started_at.isoformat(timespec="seconds"),
                "seconds": round(time.monotonic() - self.began),
                "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
                "bases": [b.as_dict() for b in self.bases],
                "steps": [s.__dict__ for s in self.steps]}

    def write_report(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        body = self.summary()
        (self.out / "report.json").write_text(json.dumps(body, indent=1, default=str))
        (self.out / "report.md").write_text(markdown(body))


def markdown(body: dict) -> str:
    """The report as Markdown: what ran, on what, each step's result and time."""
    lines = [f"# Node check ({body['check']}): commit {body['commit']}", "",
             f"Started {body['started']} on {body['machine']}; {body['seconds']} s in all.", ""]
    stand_ins = [b for b in body["bases"] if b["stand_in"]]
    if stand_ins:
        lines += ["**STAND-IN BASE IMAGES**: the real ones could not be pulled, so the images were "
                  "built on local stand-ins (figures below are CPU figures of Debian containers, "
                  "not the node's):", ""]
        for b in stand_ins:
            lines += [f"* `{b['name']}` ({b['used']}; pull: {b['pull_error']}): "
                      + "; ".join(b["differences"])]
        lines.append("")
    lines += ["| step | result | time (s) | detail |", "|---|---|---|---|"]
    for s in body["steps"]:
        first = (s["detail"] or "").strip().splitlines()
        detail = (first[0] if first else "").replace("|", "\\|")
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.0f} | {detail[:300]} |")
    failed = [s for s in body["steps"] if s["status"] == "failed"]
    for s in failed:
        lines += ["", f"## {s['name']}: failed", "", "```", s["detail"].strip()[-4000:], "```"]
    baseline = next((s for s in body["steps"] if s["name"].startswith("baseline")
                     and s["status"] == "passed"), None)
    if baseline:
        lines += ["", "## The classifier's baseline, container against embedded", "",
                  "```", baseline["detail"], "```"]
    return "\n".join(lines) + "\n"


def port_binding(port) -> tuple[str, str]:
    """(published port, host address) of an entry of `compose config`'s ports: Compose v2 writes
    a mapping, docker-compose 1.29 a string such as `127.0.0.1:8000:8000/tcp`."""
    if isinstance(port, dict):
        return str(port.get("published")), port.get("host_ip", "")
    parts = str(port).split("/")[0].split(":")
    return (parts[-2], ":".join(parts[:-2])) if len(parts) >= 3 else (parts[0], "")


def _json(response) -> dict:
    try:
        return response.json()
    except ValueError:
        return {"text": response.text[:300]}


def _commit(root: Path) -> str:
    proc = run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], check=False)
    dirty = run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                check=False).stdout.strip()
    return proc.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


# --- the baseline, measured the same way on both servers --------------------------------------
BASELINE_LEVELS = [1, 8]


def measure_baseline(server) -> list[dict]:
    """The classifier's committed baseline on `server`, measured with the course's quick
    settings at BASELINE_LEVELS; the rows of perf_analyzer's results (not saved as a course
    run)."""
    from ..measuring import perf
    from ..serving import deploy

    server.start(["food_classifier"])
    deploy.restore_baseline(server)
    opts = perf.PerfSettings.for_course(BASELINE_LEVELS)
    result = perf.run(server, "food_classifier", f"baseline ({server.mode})", opts, save=False,
                      notes="node check", sample_metrics=False)
    return json.loads(result.df.to_json(orient="records"))


def measure_embedded(out: Path) -> list[dict]:
    """`measure_baseline` on an embedded server of this machine, on free ports, in quick mode."""
    import tempfile

    from ..serving.embedded import EmbeddedTriton

    os.environ["TRITONLAB_QUICK"] = "1"
    with tempfile.TemporaryDirectory(prefix="tritonlab-node-check-") as state:
        server = EmbeddedTriton(address=settings.TritonAddress.free(), state_dir=Path(state))
        try:
            rows = measure_baseline(server)
        finally:
            server.stop()
    out.write_text(json.dumps(rows, indent=1))
    return rows


def compare_baselines(docker_rows: list[dict], embedded_rows: list[dict]) -> str:
    """The two measurements side by side, and what the numbers say (reports.compare)."""
    import pandas as pd

    from ..measuring import reports, results

    docker_df, embedded_df = pd.DataFrame(docker_rows), pd.DataFrame(embedded_rows)
    table = pd.concat([embedded_df, docker_df], ignore_index=True)
    table["p95 latency (ms)"] = table[results.P95] / 1000
    columns = ["variant", "concurrency", results.THROUGHPUT, "p95 latency (ms)",
               results.REQUESTS]
    shown = table[columns].round(1).to_string(index=False)
    both = embedded_df.merge(docker_df, on="concurrency", suffixes=("", " (docker)"))
    first = ("the container's throughput over the embedded server's: "
             + ", ".join(f"{row[results.THROUGHPUT + ' (docker)'] / row[results.THROUGHPUT]:.2f}x"
                         f" at concurrency {row['concurrency']}" for _, row in both.iterrows()))
    return (f"{first}\n{shown}\n\n{reports.compare(embedded_df, docker_df)}\n"
            "Both on this machine's cores, with perf_analyzer sharing them; the container side "
            "adds Docker's host network and the Jupyter container's perf_analyzer.")


def main(argv: list[str] | None = None) -> int:
    """`python -m tritonlab.node.check measure --out FILE`: run in the Jupyter container by the
    check (the baseline in Docker mode)."""
    parser = argparse.ArgumentParser(prog="python -m tritonlab.node.check")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("measure", help="measure the baseline on this mode's Triton")
    p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from ..serving import get_server

    rows = measure_baseline(get_server())
    args.out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
