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


#: Bytes of memory Triton keeps for its response cache (the `local` cache implementation), on
#: every server the course starts: the embedded one and the GPU node's container (compose.yaml
#: passes the same `--cache-config`). Only models whose config sets `response_cache
#: { enable: true }` use it (notebook 08); the memory is held from start, used or not.
RESPONSE_CACHE_BYTES = 64 * 2**20


def cache_config_flag() -> str:
    """The tritonserver flag that turns the response cache on, as both servers receive it."""
    return f"--cache-config=local,size={RESPONSE_CACHE_BYTES}"


DEFAULT_TRITON_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class TritonAddress:
    """Where Triton listens: one host and its three ports (HTTP, gRPC, metrics).

    Written as one URL, `TRITON_URL`: `http://HOST:HTTP_PORT`, optionally followed by
    `?grpc=PORT&metrics=PORT`; without them Triton's own layout is assumed (gRPC on the HTTP
    port + 1, metrics on + 2), as in 8000, 8001, 8002.
    """

    host: str = "127.0.0.1"
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    @property
    def http_url(self) -> str:
        """`host:port` of the HTTP endpoint, as tritonclient.http and perf_analyzer take it."""
        return f"{self.host}:{self.http}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics}/metrics"

    @property
    def url(self) -> str:
        """This address in the form TRITON_URL takes."""
        extra = ("" if (self.grpc, self.metrics) == (self.http + 1, self.http + 2)
                 else f"?grpc={self.grpc}&metrics={self.metrics}")
        return f"http://{self.host}:{self.http}{extra}"

    @classmethod
    def parse(cls, text: str) -> TritonAddress:
        """Read a TRITON_URL value; ValueError says what is wrong with it."""
        from urllib.parse import parse_qs, urlsplit

        raw = text.strip()
        parts = urlsplit(raw if "://" in raw else f"http://{raw}")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        try:
            http = parts.port or 8000
            grpc = int(query.pop("grpc", http + 1))
            metrics = int(query.pop("metrics", http + 2))
        except ValueError:
            raise ValueError(f"TRITON_URL={text!r}: ports must be numbers, as in "
                             "http://127.0.0.1:8000?grpc=8001&metrics=8002") from None
        if parts.scheme != "http" or not parts.hostname or query or parts.path not in ("", "/"):
            raise ValueError(f"TRITON_URL={text!r}: write http://HOST:PORT, optionally with "
                             "?grpc=PORT&metrics=PORT (for example http://127.0.0.1:8000)")
        return cls(parts.hostname, http, grpc, metrics)

    @classmethod
    def from_env(cls) -> TritonAddress:
        """The address in TRITON_URL (default http://127.0.0.1:8000)."""
        return cls.parse(os.environ.get("TRITON_URL", DEFAULT_TRITON_URL))

    @classmethod
    def free(cls, host: str = "127.0.0.1") -> TritonAddress:
        """Three free loopback ports, for a private server (tests, `make bench`)."""
        return cls(host, *free_ports(3))
