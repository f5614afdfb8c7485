"""Triton in the GPU node's container, behind the same interface as the embedded server.

The container is the one compose.yaml defines (`triton`: the image of Dockerfile.triton, the GPUs,
the model repository mounted at /models, its server flags, its ports published on the host's
127.0.0.1 only); `gpu_node_setup.sh` creates it. This object drives that very container through
the Docker socket, by name (`docker start`, `stop`, `restart`, `inspect`, `logs`), so its flags
live in one place, compose.yaml. It reaches Triton at TRITON_URL, the address inside the compose
network (http://triton:8000 from the Jupyter container); which host ports compose publishes
does not matter here.

The model-repository API (load and unload: it can load code, Triton's secure deployment guide
warns) is restricted by a key header (TRITONLAB_API_KEY, from the node's .env); this object sends
it with its own calls. Reading a model's config stays open: perf_analyzer reads it before every
run and cannot send a header over gRPC (its -H is for HTTP only), so restricting it broke every
measurement on the node (found by `make node-check`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .. import settings
from ..common import atomic_write, log
from ..settings import TritonAddress
from .server import ServerError, TritonServer

KEY_HEADER = "X-Tritonlab-Key"        # HTTP header Triton checks on restricted APIs
RESTRICTED = "model-repository"
#: The gRPC metadata key a client sends the key under: Triton prefixes the flag's key with
#: `triton-grpc-protocol-` (server 2.51 refuses anything else with "expecting header
#: 'triton-grpc-protocol-x-tritonlab-key'"; found by `make node-check`).
GRPC_KEY_HEADER = "triton-grpc-protocol-" + KEY_HEADER.lower()


def api_key(state_dir: Path | None = None) -> str:
    """The key for Triton's restricted APIs: TRITONLAB_API_KEY, else one kept in state_dir."""
    key = os.environ.get("TRITONLAB_API_KEY")
    if key:
        return key
    path = (state_dir or settings.state_dir()) / "api-key"
    if path.exists():
        return path.read_text().strip()
    key = secrets.token_urlsafe(24)
    atomic_write(path, key + "\n", mode=0o600)  # readable by its owner only
    return key


def restriction_flags(key: str) -> list[str]:
    """tritonserver flags restricting model control to callers that send the key (compose.yaml
    passes the same flags to the container)."""
    return [f"--http-restricted-api={RESTRICTED}:{KEY_HEADER}={key}",
            f"--grpc-restricted-protocol={RESTRICTED}:{KEY_HEADER.lower()}={key}"]


def docker_command(docker: str, *args: str, check: bool = True,
                   container: str = "triton") -> subprocess.CompletedProcess:
    """Run `<docker> <args>` (the docker CLI), its output captured as text. ServerError when
    there is no docker CLI here, or with Docker's message when it fails and `check` (saying
    how to create `container` when Docker says it does not exist)."""
    if not shutil.which(docker):
        raise ServerError("The docker command is not available here: Docker mode runs on the "
                          "GPU node (TRITONLAB_MODE=embedded uses the embedded Triton).")
    proc = subprocess.run([docker, *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        # `docker start` says "No such container", `docker inspect` "No such object"
        missing = "No such container" in proc.stderr or "No such object" in proc.stderr
        raise ServerError(
            f"`docker {' '.join(args)}` failed: {proc.stderr.strip()}"
            + (f"\nThe container '{container}' does not exist yet: create it on the "
               "node with `bash tritonlab/gpu_node_setup.sh containers` (notebook 00)."
               if missing else ""))
    return proc


class DockerTriton(TritonServer):
    """The `triton` container of compose.yaml on the GPU node (see the module's text)."""

    mode = "docker"

    def __init__(self, model_repository: Path | str | None = None,
                 address: TritonAddress | None = None, container: str = "triton",
                 key: str | None = None, docker: str = "docker") -> None:
        self.key = key or api_key()
        super().__init__(model_repository=model_repository, address=address,
                         api_headers={KEY_HEADER: self.key})
        self.container, self.docker = container, docker

    def _docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run `docker <args>`; ServerError with Docker's message when it fails and `check`."""
        return docker_command(self.docker, *args, check=check, container=self.container)

    # --- TritonServer ------------------------------------------------------------------------
    def _launch(self, models: Sequence[str]) -> None:
        if list(models) != ["*"]:
            log.info(f"The container loads the models its compose command names (all of them); "
                     f"asked for {', '.join(models)}.")
        self._docker("start", self.container)

    def _terminate(self, timeout: float) -> None:
        self._docker("stop", "-t", str(int(timeout)), self.container, check=False)

    def is_running(self) -> bool:
        proc = self._docker("inspect", "-f", "{{.State.Running}}", self.container, check=False)
        return proc.stdout.strip() == "true"

    def exit_description(self) -> str:
        proc = self._docker("inspect", "-f", "{{.State.ExitCode}}", self.container, check=False)
        code = proc.stdout.strip()
        return (f"The Triton container '{self.container}' stopped"
                + (f" (exit code {code})" if code else ""))

    def log_text(self) -> str:
        """The log of the container's current run (since it last started)."""
        started = self._docker("inspect", "-f", "{{.State.StartedAt}}", self.container,
                               check=False).stdout.strip()
        args = ["logs", *(["--since", started] if started else []), self.container]
        proc = self._docker(*args, check=False)
        return proc.stdout + proc.stderr
