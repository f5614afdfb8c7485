"""What this machine has (CPU, GPUs), to check configs and label saved results."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from functools import lru_cache


@lru_cache(maxsize=1)
def gpu_names() -> tuple[str, ...]:
    """Names of the NVIDIA GPUs `nvidia-smi` lists (none on a CPU-only machine)."""
    if not shutil.which("nvidia-smi"):
        return ()
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return tuple(ln.strip() for ln in out.stdout.splitlines() if ln.strip()) \
        if out.returncode == 0 else ()


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
