"""The embedded Triton: the real `tritonserver` binary of the nvidia-pytriton wheel, on this
machine's CPU, bound to 127.0.0.1, with explicit model control. No Docker, no GPU needed.

One Triton per checkout (per state folder): its pid file says which process started it.
A start finds one of three things there. A server this process started (a cell run again)
is stopped and started afresh; so is one left by a process that has died (a restarted
kernel: `attach=True`, the default in notebooks and tests, makes Linux stop the server when
its starter dies, and the pid file catches what is still exiting). A server another live
process started (a second notebook's kernel), or one `make serve` started to outlive it, is
never stopped by a start: ServerBusyError names who holds it and the one command that frees
it (`make stop`), and every later call that would control or measure it refuses the same
way (`check_held`). `make serve` replaces its own earlier server.
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
from .server import PortInUseError, ServerBusyError, ServerError, TritonServer


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
        #: who starts the server, as its pid file records it (`make serve` sets its own)
        self.started_by = _this_process()

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

    def holder(self) -> dict | None:
        """The pid file's record when the server it names is another session's to stop: started
        by another process that still runs (a second notebook's kernel), or meant to outlive
        its starter (`make serve`). None when there is none, or it is this process's, or left
        by a process that has died."""
        record = self.recorded()
        if record is None or record.get("by_pid") == os.getpid():
            return None
        if not record.get("attached", True):
            return record  # `make serve`: runs until `make stop`
        return record if _alive(record.get("by_pid"), record.get("by_started")) else None

    def busy_message(self, record: dict) -> str:
        """What a session that finds `record`'s server is told: who holds it, what frees it."""
        by = record.get("by") or f"process {record.get('by_pid')}"
        return (f"Triton (pid {record['pid']}, {record.get('triton_url', '')}) is running for "
                f"{by}, started {record.get('started', '?')[:19].replace('T', ' ')} UTC. One "
                "Triton serves a checkout, and this session leaves that one alone: stopping it "
                "would pull the server from under the session using it, and its configs would "
                "change under it. Stop it there (its notebook's last cell, `server.stop()`), or "
                "free it from a terminal in the course's folder with `make stop`; then run this "
                "cell again.")

    def check_held(self) -> None:
        """ServerBusyError when the Triton of this checkout is another session's (`holder`):
        then this object neither controls nor measures it."""
        if self._proc is not None and self._proc.poll() is None:
            return
        record = self.holder()
        if record is not None:
            raise ServerBusyError(self.busy_message(record))

    def _stop_recorded(self, timeout: float, any_holder: bool = False) -> bool:
        """Stop the server named in the pid file if it is this process's or left by a dead one
        (or, with `any_holder`, whoever's: `make stop`); remove a stale pid file. Returns
        whether one was stopped."""
        record = self.recorded()
        if record is not None and not any_holder and self.holder() is not None:
            return False  # another session's
        if record is not None:
            _kill_tree(record["pid"], timeout)
        self.pid_file.unlink(missing_ok=True)
        return record is not None

    def stop_any(self, timeout: float = 30.0) -> dict | None:
        """Stop whichever Triton this checkout's pid file names, whoever started it (`make
        stop`); returns its record, None when none was running."""
        record = self.recorded()
        if self._proc is not None:
            self._terminate(timeout)
        self._stop_recorded(timeout, any_holder=True)
        return record

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
        record = self.holder()
        # another session's server is left alone; only `make serve` replaces its own earlier one
        replaces_its_own = record is not None and not self.attach and not record.get(
            "attached", True)
        if record is not None and not replaces_its_own:
            raise ServerBusyError(self.busy_message(record))
        record = self.recorded()
        if self._stop_recorded(timeout=30, any_holder=True):
            log.info(f"Stopped the Triton server (pid {record['pid']}) that "
                     f"{record.get('by') or 'an earlier session'} left running.")
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
            "by_pid": os.getpid(), "by_started": psutil.Process().create_time(),
            "by": self.started_by, "attached": self.attach, "triton_url": self.address.url,
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
        if not self._stop_recorded(timeout) and (record := self.holder()) is not None:
            log.info(f"Left running: Triton (pid {record['pid']}) is {record.get('by')}'s; "
                     "`make stop` stops it.")
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    # --- state ---------------------------------------------------------------------------------
    def is_running(self) -> bool:
        """True while this object's server runs, or the pid file names a running one (another
        session's too: `check_held` tells them apart)."""
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


def _this_process() -> str:
    """This process as a pid file names it: the notebook a kernel runs (JupyterLab gives its
    kernels JPY_SESSION_NAME, and so does `make lab`), else its command line."""
    notebook = os.environ.get("JPY_SESSION_NAME")
    if notebook:
        return f"notebook {Path(notebook).name} (kernel pid {os.getpid()})"
    program, *args = psutil.Process().cmdline() or [sys.executable]
    command = " ".join(" ".join([Path(program).name, *args]).split())  # one line
    return f"`{command[:80]}` (pid {os.getpid()})"


def _alive(pid: int | None, started: float | None) -> bool:
    """Whether process `pid` still runs and is the one that had it at `started` (its create
    time: a pid is reused once its process is gone); zombies count as gone."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if started is not None and abs(proc.create_time() - started) > 1.0:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


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
    alive = _wait_gone([root], timeout)
    alive_children = _wait_gone(procs[1:], 5)
    for p in alive + alive_children:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    _wait_gone(alive + alive_children, 5)


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to `timeout` seconds for `procs` to end; returns those still running. A zombie
    has ended: another process (the kernel that started it) has to reap it, and waiting
    for that cost 40 s each time before."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        left = []
        for p in procs:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    left.append(p)
            except psutil.NoSuchProcess:
                pass
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)
