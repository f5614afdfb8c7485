"""Helpers every course model needs from Triton's Python backend: its config's parameters,
the device and threads of an instance, per-request errors, and leaving with the server.

Shared by food_classifier and conditional_captioning (which holds a generated copy of this
file).
"""

from __future__ import annotations

import json
import os

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (tests, notebooks, benchmarks)
    pb_utils = None


#: Watches this model process and its server from outside (plain sh, one process per instance):
#: when the server is gone (no such process, or a zombie), the model process gets 2 s to leave
#: on its own and is then killed. A thread inside the model process cannot do this reliably:
#: killed mid-request, the backend stub can block with Python's lock held, so no Python code
#: in it runs again (seen with a tritonserver SIGKILLed during a perf_analyzer run).
_WATCHDOG = """
while [ -e "/proc/$1" ]; do
  state=""
  { read -r _ _ state _ < "/proc/$2/stat"; } 2>/dev/null
  case "$state" in
    ""|Z|X) sleep 2; kill -9 "$1" 2>/dev/null; exit 0 ;;
  esac
  sleep 1
done
"""


def exit_with_server() -> None:
    """Leave when Triton does: a model process orphaned by a killed server would otherwise linger.

    The backend stub is Triton's child. The watchdog is started detached (its starter exits at
    once, so no zombie is left) and ends by itself when this process ends.
    """
    import subprocess

    launcher = f'({_WATCHDOG}) </dev/null >/dev/null 2>&1 &'
    subprocess.run(["/bin/sh", "-c", launcher, "tritonlab-watchdog", str(os.getpid()),
                    str(os.getppid())], check=True, timeout=10)


def check_numpy() -> str:
    """NumPy's version and folder in this model process, as 'NumPy 1.26.4 (<folder>)'.

    Raises RuntimeError under NumPy 2: the Python backend of Triton 2.51 (NGC 24.10) reads a
    BYTES tensor wrongly there (every byte taken as the first: python_backend#384) and its stub
    process dies at the first image, warm-up included. Refusing at load says why instead.
    """
    import sys

    import numpy

    where = os.path.dirname(numpy.__file__)
    if int(numpy.__version__.split(".")[0]) >= 2:
        raise RuntimeError(
            f"NumPy {numpy.__version__} ({where}) in this model process: Triton 2.51's Python "
            "backend misreads BYTES tensors under NumPy 2 (python_backend#384) and its stub "
            "dies at the first request. Install numpy<2 in the Python the model processes use, "
            f"or put a NumPy 1.x first on PYTHONPATH. sys.path begins {sys.path[:4]}")
    return f"NumPy {numpy.__version__} ({where})"


def client_error(message: str):
    """An error for one request, as the client's fault (HTTP 400, gRPC INVALID_ARGUMENT)."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    if code is None:  # older Python backends have no error codes
        return pb_utils.TritonError(message)
    return pb_utils.TritonError(message, code)


def instance_device(args) -> str:
    """The device Triton gave this instance: 'cuda:<id>' for a KIND_GPU instance, else 'cpu'.

    Without reading `model_instance_device_id`, every GPU instance would land on GPU 0.
    """
    if args.get("model_instance_kind") != "GPU":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(args.get('model_instance_device_id', 0))}"
    return "cpu"


def config_parameters(args) -> dict:
    """The `parameters` of config.pbtxt as a plain {key: string} dict."""
    config = json.loads(args["model_config"])
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota (a
    container limited with `--cpus`), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, int(quota) // int(period))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def instance_count(config: dict) -> int:
    """How many instances of this model Triton runs: every group's count (per GPU it names)."""
    total = 0
    for group in config.get("instance_group", []):
        gpus = len(group.get("gpus", [])) if group.get("kind") == "KIND_GPU" else 0
        total += int(group.get("count", 1)) * max(1, gpus)
    return max(1, total)


def cpu_threads(args, cores: int | None = None) -> int:
    """Threads for this instance's runtime (PyTorch or ONNX Runtime), from config.pbtxt.

    `num_threads` > 0 is taken as it is. Otherwise the instance gets its share of the cores:
    `cpu_share` (default 1) is the fraction of the machine's cores that all instances of this
    model use together, split evenly between them (at least one thread each). Models that run
    at the same time (the ensemble's steps) get shares by the work each does (see
    ENSEMBLE_CPU_SHARE in tritonlab/serving/configs.py).
    """
    params = config_parameters(args)
    explicit = int(params.get("num_threads", "0") or 0)
    if explicit > 0:
        return explicit
    share = float(params.get("cpu_share", "1") or 1)
    if not 0 < share <= 1:
        raise ValueError(f"cpu_share must be in (0, 1], not {share}")
    config = json.loads(args["model_config"])
    return max(1, int((cores or usable_cores()) * share) // instance_count(config))
