"""Triton in a Docker container (the GPU node), behind the same interface as the embedded one.

The Jupyter container drives Docker through the host's socket: start runs the Triton image with
the GPUs, the model repository mounted (never copied) and ports published on 127.0.0.1 only;
restart recreates the container; stop removes it; logs come from `docker logs`. The
model-repository and model-config APIs are restricted by a key header, which this object sends
with its own reloads.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from . import settings
from .server import ServerError, TritonServer
from .settings import Ports

KEY_HEADER = "X-Tritonlab-Key"        # HTTP header Triton checks on restricted APIs
RESTRICTED = "model-repository,model-config"


def api_key(state_dir: Path | None = None) -> str:
    """The key for Triton's restricted APIs: TRITONLAB_API_KEY, else one kept in state_dir."""
    key = os.environ.get("TRITONLAB_API_KEY")
    if key:
        return key
    path = (state_dir or settings.state_dir()) / "api-key"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def restriction_flags(key: str) -> list[str]:
    """tritonserver flags restricting model control and config to callers that send the key."""
    return [f"--http-restricted-api={RESTRICTED}:{KEY_HEADER}={key}",
            f"--grpc-restricted-protocol={RESTRICTED}:{KEY_HEADER.lower()}={key}"]


class DockerTriton(TritonServer):
    """Triton from `Dockerfile.triton` in a container on the GPU node."""

    mode = "docker"

    def __init__(self, model_repository: Path | str | None = None,
                 host_repository: Path | str | None = None, image: str = "tritonlab-triton",
                 container: str = "triton", network: str = "tritonlab", host: str | None = None,
                 ports: Ports | None = None, gpus: str = "all", key: str | None = None,
                 shm_size: str = "1g", docker: str = "docker") -> None:
        self.key = key or api_key()
        super().__init__(model_repository=model_repository, ports=ports,
                         host=host or os.environ.get("TRITONLAB_TRITON_HOST", "127.0.0.1"),
                         api_headers={KEY_HEADER: self.key})
        # The repository as the Docker host sees it (the Jupyter container mounts it elsewhere).
        self.host_repository = Path(host_repository or os.environ.get(
            "TRITONLAB_HOST_REPOSITORY", self.model_repository))
        self.image, self.container, self.network = image, container, network
        self.gpus, self.shm_size, self.docker = gpus, shm_size, docker

    # --- the exact commands ----------------------------------------------------------------
    def run_command(self, models: Sequence[str]) -> list[str]:
        """`docker run` for Triton: GPUs, mounted repository, loopback ports, restricted API."""
        p = self.ports
        cmd = [self.docker, "run", "-d", "--name", self.container, "--network", self.network,
               "--gpus", self.gpus, "--shm-size", self.shm_size,
               "-p", f"127.0.0.1:{p.http}:8000", "-p", f"127.0.0.1:{p.grpc}:8001",
               "-p", f"127.0.0.1:{p.metrics}:8002",
               "-v", f"{self.host_repository}:/models",
               self.image,
               "tritonserver", "--model-repository=/models", "--model-control-mode=explicit",
               *[f"--load-model={m}" for m in models], "--exit-on-error=false",
               *restriction_flags(self.key)]
        return cmd

    def remove_command(self) -> list[str]:
        return [self.docker, "rm", "-f", self.container]

    def stop_command(self, timeout: float) -> list[str]:
        return [self.docker, "stop", "-t", str(int(timeout)), self.container]

    def _docker(self, cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
        if not shutil.which(self.docker):
            raise ServerError("The docker command is not available here: Docker mode runs on the "
                              "GPU node (TRITONLAB_MODE=embedded uses the embedded Triton).")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise ServerError(f"`{' '.join(cmd[:3])} ...` failed: {proc.stderr.strip()}")
        return proc

    # --- TritonServer ------------------------------------------------------------------------
    def _launch(self, models: Sequence[str]) -> None:
        self._docker(self.remove_command(), check=False)  # a container left from an earlier run
        self._docker([self.docker, "network", "create", self.network], check=False)
        self._docker(self.run_command(models))

    def _terminate(self, timeout: float) -> None:
        self._docker(self.stop_command(timeout), check=False)
        self._docker(self.remove_command(), check=False)

    def is_running(self) -> bool:
        proc = self._docker([self.docker, "inspect", "-f", "{{.State.Running}}", self.container],
                            check=False)
        return proc.stdout.strip() == "true"

    def exit_description(self) -> str:
        return f"The Triton container '{self.container}' stopped"

    def log_text(self) -> str:
        proc = self._docker([self.docker, "logs", self.container], check=False)
        return proc.stdout + proc.stderr
