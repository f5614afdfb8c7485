"""Paths, ports and run modes shared by the whole course, each overridable from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = ROOT / "model_repository"
NOTEBOOKS = ROOT / "notebooks"
DATA = ROOT / "data"
SAMPLES = DATA / "samples"
PERF_INPUTS = DATA / "perf"
RESULTS = DATA / "results"


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else default


def state_dir() -> Path:
    """Folder for the server's pid file, log and backend links (ignored by git)."""
    return _env_path("TRITONLAB_STATE_DIR", ROOT / ".tritonlab")


def output_dir() -> Path:
    """Folder where `make lab` writes executed notebooks and figures (ignored by git)."""
    return _env_path("TRITONLAB_OUTPUT_DIR", ROOT / "build" / "lab")


def model_repository() -> Path:
    """The repository Triton serves (TRITONLAB_MODEL_REPOSITORY lets tests use a copy)."""
    return _env_path("TRITONLAB_MODEL_REPOSITORY", MODEL_REPOSITORY)


def results_dir() -> Path:
    """Where measurements are saved, one JSON file per run (ignored by git)."""
    return _env_path("TRITONLAB_RESULTS_DIR", RESULTS)


def figures_dir() -> Path:
    return output_dir() / "figures"


def api_port() -> int:
    """Port of the FastAPI endpoint (8080, as on the GPU node)."""
    return int(os.environ.get("TRITONLAB_API_PORT", 8080))


def quick_mode() -> bool:
    """True when the course runs headless for tests or `make lab`: shorter windows, fewer points."""
    return os.environ.get("TRITONLAB_QUICK", "0").lower() in {"1", "true", "yes"}


def free_ports(count: int = 3) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    import socket

    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@dataclass(frozen=True)
class Ports:
    """The three ports Triton listens on."""

    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    @classmethod
    def from_env(cls) -> Ports:
        return cls(
            http=int(os.environ.get("TRITONLAB_HTTP_PORT", 8000)),
            grpc=int(os.environ.get("TRITONLAB_GRPC_PORT", 8001)),
            metrics=int(os.environ.get("TRITONLAB_METRICS_PORT", 8002)),
        )

    @classmethod
    def free(cls) -> Ports:
        """Three free loopback ports, for a private server (tests, `make bench`)."""
        return cls(*free_ports(3))
