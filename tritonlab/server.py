"""Triton server lifecycle: start, wait until ready, reload one model, restart, stop, show the log.

`TritonServer` holds what every way of running Triton shares (readiness, model control over the
HTTP API, log display). `LocalTriton` runs the real `tritonserver` binary shipped in the
`nvidia-pytriton` wheel on this machine's CPU; a Docker implementation for the GPU node fits
behind the same interface.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import psutil
import requests

from . import settings
from .settings import Ports

#: Lines Triton prints on every machine without a GPU; harmless, so `logs()` hides them.
GPU_NOISE = re.compile(
    r"Failed to initialize NVML|DCGM|Unable to get device count|GPU metrics|"
    r"CUDA driver version is insufficient|cudaGetDeviceCount|Failed to get CUDA device count|"
    r"Unable to allocate pinned system memory|Unable to get CUDA device count|"
    r"CudaDriverHelper has not been initialized|CUDA memory pool disabled"
)


class ServerError(RuntimeError):
    """Triton could not be started, reached or controlled; the message says what to do."""


class PortInUseError(ServerError):
    """A port Triton needs is held by another process."""


class ServerNotReady(ServerError):
    """Triton exited or did not become ready in time."""


class ModelLoadError(ServerError):
    """Triton refused to load a model; the message carries Triton's reason and log lines."""


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


class TritonServer(ABC):
    """What every Triton deployment offers the notebooks: lifecycle, model control and logs."""

    mode: str = "abstract"

    def __init__(self, model_repository: Path | str | None = None,
                 ports: Ports | None = None, host: str = "127.0.0.1",
                 api_headers: dict[str, str] | None = None) -> None:
        # The repository as this machine sees it (a container may mount it elsewhere).
        self.model_repository = Path(model_repository or settings.model_repository()).resolve()
        self.ports = ports or Ports.from_env()
        self.host = host
        # Headers sent with model-control calls (the Docker setup restricts that API by a key).
        self.api_headers = dict(api_headers or {})
        self._loaded: list[str] = ["*"]  # the models the last start loaded

    # --- addresses ---------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        """`host:port` as tritonclient.http and perf_analyzer take it."""
        return f"{self.host}:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports.metrics}/metrics"

    def describe(self) -> str:
        return (f"Triton ({self.mode}) HTTP http://{self.http_url}  gRPC {self.grpc_url}  "
                f"metrics {self.metrics_url}")

    # --- what an implementation provides -----------------------------------------------------
    @abstractmethod
    def _launch(self, models: Sequence[str]) -> None:
        """Start the server process or container, loading `models` ("*" for all)."""

    @abstractmethod
    def _terminate(self, timeout: float) -> None:
        """Stop the server and everything it started; no process may be left behind."""

    @abstractmethod
    def is_running(self) -> bool:
        """True while the server process or container exists."""

    @abstractmethod
    def log_text(self) -> str:
        """The server's whole log of the current run."""

    def exit_description(self) -> str:
        return "Triton is not running"

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self, models: Sequence[str] = ("*",), timeout: float = 120.0) -> float:
        """Start Triton with `models` loaded, wait until ready; returns the seconds taken."""
        began = time.monotonic()
        self._launch(list(models))
        self.wait_ready(models, timeout=timeout)
        self._loaded = list(models)
        return time.monotonic() - began

    def stop(self, timeout: float = 30.0) -> None:
        """Stop Triton; waits for it to exit and kills it (and its model processes) if it hangs."""
        self._terminate(timeout)

    def restart(self, models: Sequence[str] | None = None, timeout: float = 120.0) -> float:
        """Full restart, as after editing config.pbtxt; returns the seconds until ready again."""
        models = list(models or self._loaded)
        began = time.monotonic()
        self.stop()
        self.start(models, timeout=timeout)
        return time.monotonic() - began

    def _get(self, path: str, timeout: float = 2.0) -> requests.Response:
        return requests.get(f"http://{self.http_url}{path}", timeout=timeout)

    def is_live(self) -> bool:
        try:
            return self._get("/v2/health/live").status_code == 200
        except requests.RequestException:
            return False

    def is_ready(self) -> bool:
        try:
            return self._get("/v2/health/ready").status_code == 200
        except requests.RequestException:
            return False

    def model_states(self) -> list[dict]:
        """The repository index: each model with its state and, if it failed, the reason."""
        resp = requests.post(f"http://{self.http_url}/v2/repository/index", json={},
                             headers=self.api_headers, timeout=5)
        resp.raise_for_status()
        return resp.json()

    def wait_ready(self, models: Iterable[str] = ("*",), timeout: float = 120.0) -> None:
        """Block until Triton answers and every model in `models` is READY, or raise saying why."""
        wanted = set(models)
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_running():
                raise ServerNotReady(
                    f"{self.exit_description()} before it became ready.\n"
                    f"Last log lines:\n{self.logs(25)}\n"
                    "Check the lines above; fix the model or config they name, then start again.")
            if self.is_live():
                states = self.model_states()
                named = {m["name"]: m for m in states}
                if "*" in wanted:  # every model Triton tried to load
                    targets = [m for m in states if m.get("state")]
                else:
                    targets = [named.get(n, {"name": n}) for n in wanted]
                failed = [m for m in targets if m.get("state") == "UNAVAILABLE" and m.get("reason")]
                if failed:
                    m = failed[0]
                    raise ModelLoadError(
                        f"Triton could not load model '{m['name']}': {m['reason']}\n"
                        f"Log lines for this model:\n{self.logs(20, model=m['name'])}")
                if all(m.get("state") == "READY" for m in targets) and self.is_ready():
                    return
            if time.monotonic() > deadline:
                raise ServerNotReady(
                    f"Triton did not become ready in {timeout:.0f} s.\n"
                    f"Last log lines:\n{self.logs(25)}\n"
                    "Check the lines above; a slow first start may need a longer timeout.")
            time.sleep(0.25)

    # --- model control -------------------------------------------------------------------------
    def reload_model(self, name: str, config=None, timeout: float = 120.0) -> float:
        """Load (or reload) one model, optionally with a new config; returns seconds until READY.

        `config` may be a `model_config_pb2.ModelConfig`, its JSON text, or None for the
        config.pbtxt on disk. (The file is sent along explicitly: Triton reloads nothing when the
        repository is unchanged, so an earlier override would otherwise stay in force.) Triton's
        own message is raised if it refuses the model.
        """
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        from .configs import read_config

        on_disk = self.model_repository / name / "config.pbtxt"
        if config is None and on_disk.exists():
            config = read_config(on_disk)
        if config is not None and not isinstance(config, str):
            from google.protobuf import json_format
            config = json_format.MessageToJson(config, preserving_proto_field_name=True)
        client = httpclient.InferenceServerClient(self.http_url, network_timeout=timeout,
                                                  connection_timeout=timeout)
        began = time.monotonic()
        try:
            client.load_model(name, headers=self.api_headers or None, config=config)
        except InferenceServerException as exc:
            raise ModelLoadError(
                f"Triton refused model '{name}': {exc.message()}\n"
                f"Log lines for this model:\n{self.logs(20, model=name)}") from None
        finally:
            client.close()
        self.wait_ready([name], timeout=timeout)
        return time.monotonic() - began

    def unload_model(self, name: str) -> None:
        resp = requests.post(f"http://{self.http_url}/v2/repository/models/{name}/unload",
                             json={}, headers=self.api_headers, timeout=30)
        if resp.status_code != 200:
            raise ServerError(f"Triton did not unload '{name}': {resp.text}")

    # --- logs --------------------------------------------------------------------------------
    def logs(self, lines: int = 40, model: str | None = None, gpu_noise: bool = False) -> str:
        """The last `lines` of the log, optionally only those naming `model`.

        Warnings that every machine without a GPU prints (NVML, DCGM) are hidden unless
        `gpu_noise` is True: they are harmless here.
        """
        kept = [ln for ln in self.log_text().splitlines()
                if (gpu_noise or not GPU_NOISE.search(ln)) and (model is None or model in ln)]
        return "\n".join(kept[-lines:])

    def show_logs(self, lines: int = 40, model: str | None = None) -> None:
        print(self.logs(lines, model=model) or "(the log is empty)")


# ---------------------------------------------------------------------------------------------
# The embedded server: the tritonserver binary from the nvidia-pytriton wheel.
# ---------------------------------------------------------------------------------------------

def _pytriton_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("The nvidia-pytriton wheel is not installed in this Python "
                          f"({sys.executable}); run `make install`.")
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def _set_parent_death_signal() -> None:
    """Runs in the child before exec: Linux sends it SIGTERM when the starting thread dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def port_owner(port: int) -> str | None:
    """Which process listens on a TCP port, as 'pid N (command)', or None if it is free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return None
        except OSError:
            pass
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
                if conn.pid:
                    try:
                        cmd = " ".join(psutil.Process(conn.pid).cmdline())[:120]
                    except psutil.Error:
                        cmd = "?"
                    return f"pid {conn.pid} ({cmd})"
    except psutil.AccessDenied:
        pass
    return "another process (not visible to this user)"


class LocalTriton(TritonServer):
    """Triton on this machine's CPU, from the nvidia-pytriton wheel: no Docker, no GPU needed.

    One pid file per state folder makes sure a server started earlier (by a kernel that was
    restarted, or by `make serve`) is stopped before a new one starts, and `attach=True` (the
    default in notebooks and tests) makes Linux stop the server when the starting process dies.
    """

    mode = "embedded"

    def __init__(self, model_repository: Path | str | None = None,
                 ports: Ports | None = None, state_dir: Path | str | None = None,
                 attach: bool = True, extra_args: Sequence[str] = (), quiet: bool = False,
                 exit_timeout: int = 10) -> None:
        super().__init__(model_repository=model_repository, ports=ports)
        self.state_dir = Path(state_dir) if state_dir else settings.state_dir()
        self.attach = attach
        self.extra_args = list(extra_args)
        self.quiet = quiet
        # On SIGTERM Triton waits this long for open client connections and in-flight requests.
        self.exit_timeout = exit_timeout
        self._proc: subprocess.Popen | None = None
        self._log_handle = None
        self._exit_hook = False

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "tritonserver.json"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "tritonserver.log"

    def _say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)

    # --- the pid file ------------------------------------------------------------------------
    def recorded(self) -> dict | None:
        """The pid file's record, if the server it names is still a running tritonserver."""
        try:
            record = json.loads(self.pid_file.read_text())
            proc = psutil.Process(record["pid"])
            if "tritonserver" in " ".join(proc.cmdline()) and proc.status() != psutil.STATUS_ZOMBIE:
                return record
        except (OSError, ValueError, KeyError, psutil.Error):
            pass
        return None

    def _write_pid_file(self, record: dict) -> None:
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, self.pid_file)

    def _stop_recorded(self, timeout: float) -> bool:
        """Stop the server named in the pid file, if it still runs; remove a stale pid file."""
        record = self.recorded()
        if record is not None:
            _kill_tree(record["pid"], timeout)
        self.pid_file.unlink(missing_ok=True)
        return record is not None

    # --- start ---------------------------------------------------------------------------------
    def binary(self) -> Path:
        return _pytriton_dir() / "bin" / "tritonserver"

    def _backend_dir(self) -> Path:
        """A backend folder holding the Python backend and the stub built for this Python."""
        tsdir = _pytriton_dir()
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = tsdir / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.exists():
            have = sorted(p.name for p in (tsdir / "python_backend_stubs").iterdir())
            raise ServerError(f"nvidia-pytriton has no Python backend stub for Python {version} "
                              f"(it has {', '.join(have)}); use one of those Python versions.")
        target = self.state_dir / "backends" / "python"
        target.mkdir(parents=True, exist_ok=True)
        for src in (tsdir / "backends" / "python" / "libtriton_python.so",
                    tsdir / "backends" / "python" / "triton_python_backend_utils.py", stub):
            link = target / src.name
            if link.is_symlink() or link.exists():
                if link.is_symlink() and Path(os.readlink(link)) == src:
                    continue
                link.unlink()
            link.symlink_to(src)
        return target.parent

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = [str(_pytriton_dir().parent.parent / "nvidia_pytriton.libs")]
        libdir = sysconfig.get_config_var("LIBDIR")
        if libdir and sysconfig.get_config_var("Py_ENABLE_SHARED"):
            libs.insert(0, libdir)  # this Python's own libpython, for the backend stub
        if env.get("LD_LIBRARY_PATH"):
            libs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = ":".join(libs)
        # The stub imports numpy, torch, ... from the environment it inherits: this one.
        bindir = str(Path(sys.executable).parent)
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
        if sys.prefix != sys.base_prefix:
            env["VIRTUAL_ENV"] = sys.prefix
        site = [p for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}]
        env["PYTHONPATH"] = os.pathsep.join(site + [env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                            else site)
        return env

    def _check_stub_links(self, backend_dir: Path, env: dict[str, str]) -> None:
        if not shutil.which("ldd"):
            return
        stub = backend_dir / "python" / "triton_python_backend_stub"
        out = subprocess.run(["ldd", str(stub)], capture_output=True, text=True, env=env).stdout
        missing = [ln.split()[0] for ln in out.splitlines() if "not found" in ln]
        if missing:
            hint = ""
            if any(m.startswith("libpython") for m in missing):
                v = f"{sys.version_info.major}.{sys.version_info.minor}"
                hint = f" Install it: `sudo apt-get install libpython{v}` (Debian/Ubuntu)."
            raise ServerError(f"The Python backend stub cannot find {', '.join(missing)}.{hint}")

    def command(self, models: Sequence[str], backend_dir: Path) -> list[str]:
        """The exact tritonserver command line this object runs."""
        cmd = [
            str(self.binary()),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_dir}",
            "--model-control-mode=explicit",
            *[f"--load-model={m}" for m in models],
            "--exit-on-error=false",
            f"--http-address={self.host}", f"--http-port={self.ports.http}",
            f"--grpc-address={self.host}", f"--grpc-port={self.ports.grpc}",
            f"--metrics-address={self.host}", f"--metrics-port={self.ports.metrics}",
            f"--exit-timeout-secs={self.exit_timeout}",
            "--log-verbose=0",
        ]
        return cmd + self.extra_args

    def _launch(self, models: Sequence[str]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.model_repository.is_dir():
            raise ServerError(f"No model repository at {self.model_repository}.")
        if self._proc is not None and self._proc.poll() is None:
            raise ServerError("This Triton is already running; call restart() or stop() first.")
        if self._stop_recorded(timeout=30):
            self._say("Stopped the Triton server an earlier session left running "
                      "(a restarted kernel or `make serve`).")
        for label, port in (("HTTP", self.ports.http), ("gRPC", self.ports.grpc),
                            ("metrics", self.ports.metrics)):
            owner = port_owner(port)
            if owner:
                raise PortInUseError(
                    f"Port {port} ({label}) is already in use by {owner}. Stop that process, or "
                    "give Triton other ports with TRITONLAB_HTTP_PORT, TRITONLAB_GRPC_PORT and "
                    "TRITONLAB_METRICS_PORT.")
        backend_dir = self._backend_dir()
        env = self._environment()
        self._check_stub_links(backend_dir, env)
        cmd = self.command(models, backend_dir)
        if self.log_file.exists():
            os.replace(self.log_file, self.log_file.with_suffix(".log.1"))
        self._log_handle = open(self.log_file, "wb")
        self._proc = subprocess.Popen(
            cmd, stdout=self._log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=self.state_dir, start_new_session=True,
            preexec_fn=_set_parent_death_signal if self.attach else None)
        self._write_pid_file({
            "pid": self._proc.pid, "started": datetime.now(timezone.utc).isoformat(),
            "by_pid": os.getpid(), "attached": self.attach, "ports": vars(self.ports),
            "model_repository": str(self.model_repository), "command": cmd,
        })
        if self.attach and not self._exit_hook:
            atexit.register(self._atexit_stop)  # once per object, however often it restarts
            self._exit_hook = True

    def _atexit_stop(self) -> None:
        try:
            if self._proc is not None and self._proc.poll() is None:
                self.stop(timeout=10)
        except Exception:  # interpreter shutdown: never raise from here
            pass

    # --- stop ---------------------------------------------------------------------------------
    def _terminate(self, timeout: float) -> None:
        if self._proc is not None:
            _kill_tree(self._proc.pid, timeout)
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self._proc = None
        self._stop_recorded(timeout)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    # --- state ---------------------------------------------------------------------------------
    def is_running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self.recorded() is not None

    def exit_description(self) -> str:
        if self._proc is not None and self._proc.poll() is not None:
            code = self._proc.returncode
            if code < 0:
                try:
                    return f"Triton was killed by {signal.Signals(-code).name}"
                except ValueError:
                    pass
            return f"Triton exited with code {code}"
        return "Triton is not running"

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""


def _kill_tree(pid: int, timeout: float) -> None:
    """SIGTERM a server and its model processes, wait, then SIGKILL whatever is left."""
    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    # Triton unloads its models and stops their stub processes itself on SIGTERM.
    try:
        root.send_signal(signal.SIGTERM)
    except psutil.NoSuchProcess:
        pass
    _, alive = psutil.wait_procs([root], timeout=timeout)
    _, alive_children = psutil.wait_procs(procs[1:], timeout=5)
    for p in alive + alive_children:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive + alive_children, timeout=5)


def choose_mode() -> tuple[str, str]:
    """Which Triton this machine uses, and why: TRITONLAB_MODE forces 'embedded' or 'docker'.

    The Jupyter container on the GPU node sets TRITONLAB_MODE=docker (see compose.yaml);
    everywhere else the embedded server is the default.
    """
    forced = os.environ.get("TRITONLAB_MODE", "").strip().lower()
    if forced in ("embedded", "docker"):
        return forced, f"TRITONLAB_MODE={forced}"
    if forced:
        raise ServerError(f"TRITONLAB_MODE={forced!r}: use 'embedded' or 'docker'.")
    return "embedded", "the default off the GPU node; TRITONLAB_MODE=docker selects Docker"


def get_server(**kwargs) -> TritonServer:
    """The Triton for this machine (embedded here, Docker on the GPU node); says which and why."""
    mode, why = choose_mode()
    print(f"Triton mode: {mode} ({why})")
    if mode == "docker":
        from .docker_server import DockerTriton

        return DockerTriton(**kwargs)
    return LocalTriton(**kwargs)
