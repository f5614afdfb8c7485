"""What this machine has (CPU, GPUs), to check configs and label saved results."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from functools import lru_cache

#: Where the GPUs are on the GPU node: compose.yaml's `triton` container holds them and runs
#: Triton's model instances; the Jupyter container, where the notebooks run, has none (and no
#: nvidia-smi), so there the GPUs are counted inside `triton`, through the Docker socket.
TRITON_CONTAINER = "triton"
_GPU_QUERY = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
_found_gpus: tuple[str, ...] | None = None


def _gpu_query() -> tuple[list[str], str] | None:
    """The command that lists the GPUs Triton's instances can use, and where it runs; None
    when there is no way to ask (no nvidia-smi here, and not the GPU node's Docker mode)."""
    if shutil.which("nvidia-smi"):
        return _GPU_QUERY, "this machine"
    docker_mode = os.environ.get("TRITONLAB_MODE", "").strip().lower() == "docker"
    if docker_mode and shutil.which("docker"):
        return (["docker", "exec", TRITON_CONTAINER, *_GPU_QUERY],
                f"the '{TRITON_CONTAINER}' container")
    return None


def gpu_names() -> tuple[str, ...]:
    """Names of the NVIDIA GPUs `nvidia-smi` lists where Triton runs: on this machine, or in
    compose's `triton` container in Docker mode (TRITONLAB_MODE=docker, the GPU node's Jupyter
    container). () on a CPU-only machine, and while that container is not running (not
    remembered then: asked again next time; a list once found is remembered)."""
    global _found_gpus
    if _found_gpus is not None:
        return _found_gpus
    query = _gpu_query()
    if query is None:
        return ()
    try:
        out = subprocess.run(query[0], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    if out.returncode != 0:
        return ()
    _found_gpus = tuple(ln.strip() for ln in out.stdout.splitlines() if ln.strip())
    return _found_gpus


def forget_gpus() -> None:
    """Ask nvidia-smi again at the next `gpu_names()` (tests; a GPU added while running)."""
    global _found_gpus
    _found_gpus = None


def gpu_count() -> int:
    return len(gpu_names())


@lru_cache(maxsize=1)
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> dict:
    """The machine a measurement ran on."""
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = None
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "memory_gib": round(mem or 0, 1),
            "gpus": list(gpu_names()), "platform": platform.platform()}


def describe(config: dict | None) -> str:
    """Where a model's instances run, from the config Triton reports, e.g. 'CPU x2'."""
    if not config:
        return "unknown"
    parts = []
    for group in config.get("instance_group", []):
        kind = group.get("kind", "KIND_CPU").replace("KIND_", "")
        count = group.get("count", 1)
        if kind == "GPU":
            gpus = group.get("gpus") or list(range(gpu_count()))
            parts.append(f"GPU {','.join(map(str, gpus))} x{count}")
        else:
            parts.append(f"CPU x{count}")
    where = " + ".join(parts) or "CPU x1"
    hw = ", ".join(gpu_names()) if "GPU" in where else f"{os.cpu_count()} cores, {cpu_name()}"
    return f"{where} ({hw})"


def usable_cores() -> int:
    """Cores Triton's model processes may use here: this process's CPU affinity, capped by a
    cgroup CPU quota. The served models compute their thread counts with the same function
    (`cpu_threads` in food_classifier's model code)."""
    from ..assets.repository import classifier_module

    return classifier_module().backend_helpers.usable_cores()
