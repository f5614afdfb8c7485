"""The embedded Triton: the real `tritonserver` binary of the nvidia-pytriton wheel, on this
machine's CPU, bound to 127.0.0.1, with explicit model control. No Docker, no GPU needed.

A pid file per state folder makes sure a server started earlier (by a restarted kernel, or by
`make serve`) is stopped before a new one starts; `attach=True` (the default in notebooks and
tests) makes Linux stop the server when the process that started it dies.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import psutil

from .. import settings
from ..common import atomic_write, log
from ..settings import TritonAddress
from .server import PortInUseError, ServerError, TritonServer


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


class EmbeddedTriton(TritonServer):
    """Triton on this machine's CPU, from the nvidia-pytriton wheel (see the module's text)."""

    mode = "embedded"

    def __init__(self, model_repository: Path | str | None = None,
                 address: TritonAddress | None = None, state_dir: Path | str | None = None,
                 attach: bool = True, extra_args: Sequence[str] = (),
                 exit_timeout: int = 10) -> None:
        super().__init__(model_repository=model_repository, address=address)
        self.state_dir = Path(state_dir) if state_dir else settings.state_dir()
        self.attach = attach
        self.extra_args = list(extra_args)
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
        atomic_write(self.pid_file, json.dumps(record, indent=2))

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
        # The backend stub's interpreter takes the first `python3` on PATH as its own and reads
        # that environment's site-packages (numpy, torch, ...); it ignores PYTHONPATH (seen with
        # this server's stub: see tritonlab.gpu_bundle.make_stub_python). So this Python's bin/
        # goes first on PATH (the PYTHONPATH set below does not reach the stub).
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
            f"--http-address={self.address.host}", f"--http-port={self.address.http}",
            f"--grpc-address={self.address.host}", f"--grpc-port={self.address.grpc}",
            f"--metrics-address={self.address.host}", f"--metrics-port={self.address.metrics}",
            f"--exit-timeout-secs={self.exit_timeout}",
            "--log-verbose=0",
            # the response cache (see settings.RESPONSE_CACHE_BYTES); the wheel keeps the cache
            # library in its own folder, not in /opt/tritonserver/caches where Triton looks
            settings.cache_config_flag(), f"--cache-dir={_pytriton_dir() / 'caches'}",
        ]
        return cmd + self.extra_args

    def _launch(self, models: Sequence[str]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.model_repository.is_dir():
            raise ServerError(f"No model repository at {self.model_repository}.")
        if self._proc is not None and self._proc.poll() is None:
            raise ServerError("This Triton is already running; call restart() or stop() first.")
        if self._stop_recorded(timeout=30):
            log.info("Stopped the Triton server an earlier session left running "
                     "(a restarted kernel or `make serve`).")
        for label, port in (("HTTP", self.address.http), ("gRPC", self.address.grpc),
                            ("metrics", self.address.metrics)):
            owner = port_owner(port)
            if owner:
                raise PortInUseError(
                    f"Port {port} ({label}) is already in use by {owner}. Stop that process, or "
                    "give Triton other ports with TRITON_URL (for example "
                    "TRITON_URL=http://127.0.0.1:9000 for 9000, 9001 and 9002).")
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
            "by_pid": os.getpid(), "attached": self.attach, "triton_url": self.address.url,
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
            stop_child(self._proc, timeout)
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
        return describe_exit(self._proc, "Triton") or "Triton is not running"

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""


def stop_child(proc: subprocess.Popen, timeout: float) -> None:
    """Stop a process this one started, and every process it started (`_kill_tree`), then
    reap it so that it leaves no zombie."""
    _kill_tree(proc.pid, timeout)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def describe_exit(proc: subprocess.Popen | None, what: str) -> str | None:
    """How a process this one started ended ('<what> was killed by SIGKILL', '<what> exited
    with code 1'); None while it runs, or when there is none."""
    if proc is None or proc.poll() is None:
        return None
    code = proc.returncode
    if code < 0:
        try:
            return f"{what} was killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"{what} exited with code {code}"


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
