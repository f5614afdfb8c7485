"""The Docker engine `make node-check` runs the GPU node's containers on, found or started here.

A machine whose Docker already answers (`docker info`) is used as it is. Otherwise Debian's
packages are installed (`docker.io`, `docker-compose`, and `debootstrap` for the stand-in base
images), `dockerd` is started in the background with the flags that work on a machine without
iptables or a default bridge (`--iptables=false --bridge=none`: the check's containers share the
host's network, compose.host-network.yaml), and stopped again by `stop()`. What the check
started is all it stops; a daemon it found running is left as it was.

Compose: the node's `docker compose` (v2 plugin) where it works, else Debian's `docker-compose`
1.29; compose.yaml is written for both.

Standard library only, like `gpu_check`: the images can be built before the course's virtual
environment exists.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

#: Debian 12's packages: the engine and its CLI, Compose 1.29, and what builds a Debian root
#: filesystem for the stand-in base images (tritonlab.node.standins).
DEBIAN_PACKAGES = {"dockerd": "docker.io", "docker-compose": "docker-compose",
                   "debootstrap": "debootstrap"}
#: Storage drivers tried in turn when this check starts the daemon: overlay2 copies nothing,
#: vfs works wherever overlay mounts do not (it copies each layer).
STORAGE_DRIVERS = ("overlay2", "vfs")


class EngineError(RuntimeError):
    """Docker could not be found, installed, started or driven; the message says what to do."""


def as_root(command: list[str]) -> list[str]:
    """`command`, behind sudo when this process is not root."""
    return command if os.geteuid() == 0 else ["sudo", *command]


def run(command: list[str], timeout: float | None = None, check: bool = True,
        input: str | None = None, env: dict[str, str] | None = None,
        cwd: Path | str | None = None) -> subprocess.CompletedProcess:
    """Run `command`, its output captured as text; EngineError with its last lines when it fails
    and `check`, or when it runs past `timeout` seconds."""
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              input=input, env=env, cwd=cwd)
    except FileNotFoundError:
        raise EngineError(f"`{command[0]}` is not installed here.") from None
    except subprocess.TimeoutExpired:
        raise EngineError(f"`{' '.join(command)}` ran past {timeout:.0f} s.") from None
    if check and proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise EngineError(f"`{' '.join(command)}` failed (exit {proc.returncode}):\n{tail}")
    return proc


@dataclass
class DockerEngine:
    """The Docker engine of this machine (see the module's text). `state_dir` keeps the log and
    pid of a daemon this check starts."""

    state_dir: Path
    docker: str = "docker"
    installed: list[str] = field(default_factory=list)   # Debian packages this check installed
    started_pid: int | None = None                        # the dockerd this check started
    storage_driver: str | None = None

    # --- finding and starting ----------------------------------------------------------------
    def answers(self) -> bool:
        """True when a Docker daemon answers this machine's docker CLI."""
        if not shutil.which(self.docker):
            return False
        return run([self.docker, "info", "--format", "{{.ServerVersion}}"], timeout=30,
                   check=False).returncode == 0

    def install(self) -> list[str]:
        """Install the Debian packages whose commands are missing (apt-get, as root or with
        sudo); returns their names. EngineError when apt-get is not here or fails."""
        missing = sorted({pkg for cmd, pkg in DEBIAN_PACKAGES.items()
                          if not shutil.which(cmd) and not Path("/usr/sbin", cmd).exists()})
        if not missing:
            return []
        if not shutil.which("apt-get"):
            raise EngineError(f"Docker is missing ({', '.join(missing)}) and this machine has no "
                              "apt-get: install Docker Engine and Compose, start the daemon, and "
                              "run `make node-check` again.")
        print(f"installing Debian's {', '.join(missing)} (apt-get) ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run(as_root(["apt-get", "update", "-qq"]), timeout=600, env=env)
        run(as_root(["apt-get", "install", "-y", "-qq", *missing]), timeout=1200, env=env)
        self.installed += missing
        return missing

    def start(self, timeout: float = 60.0) -> None:
        """Start `dockerd` in the background (its own session, so it outlives no one but this
        check: `stop()` ends it), trying each of STORAGE_DRIVERS until `docker info` answers.
        EngineError with the daemon's last log lines when none works."""
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.state_dir / "dockerd.log"
        tried = []
        for driver in STORAGE_DRIVERS:
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(
                    as_root([dockerd, "--iptables=false", "--bridge=none",
                             f"--storage-driver={driver}"]),
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                if self.answers():
                    self.started_pid, self.storage_driver = proc.pid, driver
                    (self.state_dir / "dockerd.pid").write_text(f"{proc.pid}\n")
                    return
                time.sleep(1)
            tried.append(driver)
            self._end(proc.pid)
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise EngineError(f"dockerd did not answer with the storage drivers {', '.join(tried)}; "
                          f"its log ({log_path}):\n{tail}")

    def _adopt(self) -> None:
        """A daemon an interrupted earlier check started (its pid file here, the process still a
        dockerd) is this check's to stop."""
        pid_file = self.state_dir / "dockerd.pid"
        try:
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            pid_file.unlink(missing_ok=True)
            return
        # the daemon itself, or the sudo that started it (`sudo /usr/sbin/dockerd ...`)
        if any(Path(os.fsdecode(arg)).name == "dockerd" for arg in cmdline.split(b"\0")[:2]):
            print(f"using the dockerd (pid {pid}) an earlier, interrupted check started; it is "
                  "stopped at the end", flush=True)
            self.started_pid = pid
        else:  # that pid is another process now
            pid_file.unlink(missing_ok=True)

    def ensure(self) -> dict:
        """A daemon that answers: the one running, else Debian's, installed and started here.
        Returns what was found and done (versions, compose command, installed, started)."""
        self._adopt()
        if not self.answers():
            self.install()
            if not self.answers():
                self.start()
        return self.describe()

    # --- what it is --------------------------------------------------------------------------
    def compose(self) -> list[str]:
        """The Compose command: `docker compose` (v2) where it works, else `docker-compose`.
        EngineError when neither is here."""
        if run([self.docker, "compose", "version"], timeout=30, check=False).returncode == 0:
            return [self.docker, "compose"]
        if shutil.which("docker-compose"):
            return ["docker-compose"]
        raise EngineError("No Docker Compose here: install Compose v2 (Docker's docker-compose-"
                          "plugin) or Debian's docker-compose.")

    def describe(self) -> dict:
        """Versions and provenance, for the report."""
        server = run([self.docker, "version", "--format", "{{.Server.Version}}"], timeout=30,
                     check=False).stdout.strip()
        client = run([self.docker, "version", "--format", "{{.Client.Version}}"], timeout=30,
                     check=False).stdout.strip()
        driver = run([self.docker, "info", "--format", "{{.Driver}}"], timeout=30,
                     check=False).stdout.strip()
        compose = self.compose()
        compose_version = run([*compose, "version", "--short"], timeout=30,
                              check=False).stdout.strip()
        return {"server": server, "client": client, "storage driver": driver,
                "compose": " ".join(compose), "compose version": compose_version,
                "installed here": self.installed,
                "daemon": ("started by this check" if self.started_pid else "already running")}

    # --- stopping ----------------------------------------------------------------------------
    def _end(self, pid: int, timeout: float = 30.0) -> None:
        """SIGTERM to the process group of `pid` (dockerd and the containerd it started), then
        SIGKILL if it is still there after `timeout` seconds."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return
            except PermissionError:  # started with sudo: ask sudo to end it
                run(as_root(["kill", f"-{int(sig)}", f"-{pid}"]), check=False)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                try:
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:
                        return
                except ChildProcessError:  # not our child: gone once kill(0) fails
                    try:
                        os.kill(pid, 0)
                    except ProcessLookupError:
                        return
                time.sleep(0.5)

    def stop(self) -> bool:
        """Stop the daemon this check started (none otherwise); True if one was stopped."""
        if self.started_pid is None:
            return False
        self._end(self.started_pid)
        (self.state_dir / "dockerd.pid").unlink(missing_ok=True)
        self.started_pid = None
        return True
