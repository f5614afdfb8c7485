"""Base images for the GPU node's Dockerfiles where the real ones cannot be pulled.

Dockerfile.triton starts `FROM nvcr.io/nvidia/tritonserver:24.10-py3` and Dockerfile.jupyter
`FROM python:3.11-slim-bookworm`. On the node both are pulled. On a machine that reaches neither
NVIDIA's registry nor Docker Hub (this one, and CI), `make node-check` builds a **stand-in** under
the same name, so that both project Dockerfiles build unchanged:

* a Debian 12 root filesystem made by `debootstrap --variant=minbase` from Debian's archive,
  imported as `tritonlab-standin/debian:bookworm`;
* for Triton: Debian's Python 3.11 and pip, and the `tritonserver` of the `nvidia-pytriton 0.7.0`
  wheel (server 2.51.0, the server of the 24.10 image) laid out as in the NGC image:
  `/opt/tritonserver/{bin,lib,backends/python,caches}`, `tritonserver` on PATH;
* for Python: Debian's Python 3.11 with pip, `python` and `pip` on PATH, as the official image.

Each stand-in says so in its labels (`tritonlab.stand-in.*`: what it stands in for, what it is
built from, how it differs). Where a stand-in is used, every figure measured on it is a CPU
figure of a Debian container, not the node's.

Standard library only (see tritonlab.node.engine).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import settings
from .engine import DockerEngine, EngineError, as_root, run

DEBIAN_IMAGE = "tritonlab-standin/debian:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
LABEL = "tritonlab.stand-in"
#: The host's CA bundle: a machine whose network inspects TLS (this one) signs PyPI's certificate
#: with a CA of its own, which Debian's bundle lacks; the stand-ins trust what the host trusts.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PYTRITON = "nvidia-pytriton==0.7.0"
#: The CUDA runtime library of the 24.10 image's CUDA 12.6 (the release torch 2.7.1 pins too):
#: perf_analyzer from tritonclient links libcudart.so.12, which the NGC image has in
#: /usr/local/cuda/lib64. The stand-in has that one library there, and no driver or GPU.
CUDA_RUNTIME = "nvidia-cuda-runtime-cu12==12.6.77"

_COMMON = """\
COPY host-ca/ /usr/local/share/ca-certificates/host/
RUN apt-get update \\
 && apt-get install -y --no-install-recommends python3 python3-pip python3-venv {packages} \\
    ca-certificates \\
 && update-ca-certificates \\
 && rm -f /usr/lib/python3*/EXTERNALLY-MANAGED \\
 && rm -rf /var/lib/apt/lists/*
"""

#: What each stand-in is: the lines after `FROM` (a Dockerfile), and how it differs from the
#: real image. `{packages}` in _COMMON is each one's extra Debian packages.
RECIPES = {
    "nvcr.io/nvidia/tritonserver:24.10-py3": {
        "packages": "libpython3.11 unzip",
        "lines": """\
# The server of {pytriton} (tritonserver 2.51.0) where the NGC image has it; the Python
# backend with the stub built for this image's Python; libcudart.so.12 of {cuda_runtime}
# where the NGC image has CUDA's libraries.
RUN pip download --no-cache-dir --no-deps --only-binary=:all: -d /tmp/wheel {pytriton} \\
      {cuda_runtime} \\
 && unzip -q /tmp/wheel/nvidia_pytriton-*.whl 'pytriton/tritonserver/*' \\
      'nvidia_pytriton.libs/*' -d /tmp/x \\
 && unzip -q /tmp/wheel/nvidia_cuda_runtime_cu12-*.whl 'nvidia/cuda_runtime/lib/*' -d /tmp/x \\
 && mkdir -p /usr/local/cuda/lib64 \\
 && mv /tmp/x/nvidia/cuda_runtime/lib/libcudart.so.12 /usr/local/cuda/lib64/ \\
 && py=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])') \\
 && mkdir -p /opt/tritonserver/backends/python \\
 && mv /tmp/x/pytriton/tritonserver/bin /tmp/x/pytriton/tritonserver/caches /opt/tritonserver/ \\
 && mv /tmp/x/nvidia_pytriton.libs /opt/tritonserver/lib \\
 && mv /tmp/x/pytriton/tritonserver/backends/python/* \\
       /tmp/x/pytriton/tritonserver/python_backend_stubs/$py/triton_python_backend_stub \\
       /opt/tritonserver/backends/python/ \\
 && chmod -R u=rwX,go=rX /opt/tritonserver \\
 && chmod +x /opt/tritonserver/bin/tritonserver \\
       /opt/tritonserver/backends/python/triton_python_backend_stub \\
 && rm -rf /tmp/wheel /tmp/x
ENV PATH=/opt/tritonserver/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    LD_LIBRARY_PATH=/opt/tritonserver/lib:/usr/local/cuda/lib64
WORKDIR /opt/tritonserver
""",
        "differences": [
            "Debian 12 instead of Ubuntu 22.04 (glibc 2.36, not 2.35)",
            "Python 3.11 instead of 3.10",
            "no GPU, CUDA driver, cuDNN or TensorRT (every model runs on the CPU); of CUDA only "
            f"libcudart.so.12 ({CUDA_RUNTIME}) in /usr/local/cuda/lib64, which perf_analyzer "
            "links",
            "only the Python backend (no onnxruntime, pytorch or tensorrt backends)",
            f"tritonserver 2.51.0 from the {PYTRITON} wheel, its libraries found through "
            "LD_LIBRARY_PATH=/opt/tritonserver/lib",
            "trusts this machine's CA certificates too",
        ],
    },
    "python:3.11-slim-bookworm": {
        "packages": "python-is-python3",
        "lines": "ENV LANG=C.UTF-8\nCMD [\"python3\"]\n",
        "differences": [
            "Debian's Python 3.11.2 and pip in /usr/bin instead of a Python built in /usr/local",
            "trusts this machine's CA certificates too",
        ],
    },
}


@dataclass
class BaseImage:
    """Which image a Dockerfile's FROM got, and how: for the report."""

    name: str
    used: str                      # "pulled", "present", "stand-in built", "stand-in kept"
    stand_in: bool
    seconds: float = 0.0
    pull_error: str = ""
    differences: list[str] = field(default_factory=list)
    image_id: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def base_images(dockerfiles: list[Path] | None = None) -> list[str]:
    """The images the project's Dockerfiles start FROM, in order (read from the files)."""
    dockerfiles = dockerfiles or [settings.ROOT / "Dockerfile.triton",
                                  settings.ROOT / "Dockerfile.jupyter"]
    names = []
    for path in dockerfiles:
        for line in path.read_text().splitlines():
            match = re.match(r"\s*FROM\s+(?:--platform=\S+\s+)?(\S+)", line, re.IGNORECASE)
            if match and match.group(1) not in names:
                names.append(match.group(1))
    return names


def recipe(name: str) -> str:
    """The stand-in's Dockerfile for the real image `name`; KeyError for an image without one."""
    spec = RECIPES[name]
    return (f"FROM {DEBIAN_IMAGE}\n" + _COMMON.format(packages=spec["packages"])
            + spec["lines"].format(pytriton=PYTRITON, cuda_runtime=CUDA_RUNTIME))


def recipe_id(name: str) -> str:
    """A short hash of the stand-in's recipe and of the CA certificates it trusts: a stand-in
    built from another recipe is built again."""
    digest = hashlib.sha256(recipe(name).encode())
    if HOST_CA_BUNDLE.exists():
        digest.update(HOST_CA_BUNDLE.read_bytes())
    return digest.hexdigest()[:16]


def labels_of(engine: DockerEngine, image: str) -> dict[str, str] | None:
    """The labels of a local image (None when there is no such image here)."""
    proc = run([engine.docker, "image", "inspect", "--format", "{{json .Config.Labels}}", image],
               timeout=60, check=False)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout.strip() or "null") or {}


def image_id(engine: DockerEngine, image: str) -> str:
    return run([engine.docker, "image", "inspect", "--format", "{{.Id}}", image], timeout=60,
               check=False).stdout.strip()


_DEBIAN_ROOT = threading.Lock()  # stand-ins built side by side make the root once


def debian_root(engine: DockerEngine) -> None:
    """`tritonlab-standin/debian:bookworm`: a minimal Debian 12 root filesystem from Debian's
    archive (debootstrap), imported into Docker; kept for later runs. Safe to call from several
    threads at once: one makes it, the others wait for it."""
    with _DEBIAN_ROOT:
        if labels_of(engine, DEBIAN_IMAGE) is None:
            _debootstrap(engine)


def _debootstrap(engine: DockerEngine) -> None:
    if not shutil.which("debootstrap"):
        raise EngineError("debootstrap is missing: `apt-get install debootstrap` (the stand-in "
                          "base images start from a Debian root filesystem it makes).")
    began = time.monotonic()
    print(f"building {DEBIAN_IMAGE} with debootstrap (about a minute) ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="tritonlab-debian-") as tmp:
        root = Path(tmp) / "root"
        run(as_root(["debootstrap", "--variant=minbase", "bookworm", str(root), DEBIAN_MIRROR]),
            timeout=1200)
        run(as_root(["sh", "-c", f'tar -C "{root}" -c . | {engine.docker} import '
                           f'-c "LABEL {LABEL}.for=debian:bookworm '
                           f'{LABEL}.built-from=debootstrap_minbase_bookworm" '
                           f'- {DEBIAN_IMAGE}']), timeout=600)
        run(as_root(["rm", "-rf", str(root)]), timeout=300, check=False)
    print(f"{DEBIAN_IMAGE}: {time.monotonic() - began:.0f} s", flush=True)


def _host_certificates(folder: Path) -> int:
    """The host's trusted CA certificates, one file each, into `folder`; returns their count."""
    folder.mkdir(parents=True, exist_ok=True)
    if not HOST_CA_BUNDLE.exists():
        return 0
    certs = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----",
                       HOST_CA_BUNDLE.read_text(errors="replace"), re.S)
    for i, cert in enumerate(certs):
        (folder / f"host-{i:03d}.crt").write_text(cert + "\n")
    return len(certs)


def build_stand_in(engine: DockerEngine, name: str) -> None:
    """Build the stand-in for `name` under that very name, labelled as a stand-in."""
    debian_root(engine)
    spec = RECIPES[name]
    with tempfile.TemporaryDirectory(prefix="tritonlab-standin-") as tmp:
        context = Path(tmp)
        (context / "Dockerfile").write_text(recipe(name))
        _host_certificates(context / "host-ca")
        labels = {f"{LABEL}": "true", f"{LABEL}.for": name,
                  f"{LABEL}.built-from": f"{DEBIAN_IMAGE} (debootstrap) + Debian packages"
                  + (f" + {PYTRITON}" if "tritonserver" in name else ""),
                  f"{LABEL}.differences": "; ".join(spec["differences"]),
                  f"{LABEL}.recipe": recipe_id(name)}
        args = [engine.docker, "build", "--network", "host", "-t", name]
        for key, value in labels.items():
            args += ["--label", f"{key}={value}"]
        run([*args, str(context)], timeout=1800)


def ensure_base(engine: DockerEngine, name: str, pull_timeout: float = 120.0) -> BaseImage:
    """The image `name` for a Dockerfile's FROM: pulled when the registry answers, else a
    stand-in (kept from an earlier run if built from the same recipe, else built now).
    EngineError when it can be neither pulled nor stood in for."""
    began = time.monotonic()
    try:
        pull = run([engine.docker, "pull", name], timeout=pull_timeout, check=False)
        if pull.returncode == 0:
            return BaseImage(name, "pulled", False, time.monotonic() - began,
                             image_id=image_id(engine, name))
        error = (pull.stderr or pull.stdout).strip().splitlines()[-1:] or ["(no message)"]
    except EngineError as exc:  # a registry that does not answer in time
        error = [str(exc)]
    labels = labels_of(engine, name)
    if labels is not None and not labels.get(LABEL):
        # the real image, pulled on an earlier day: better than any stand-in
        return BaseImage(name, "present", False, time.monotonic() - began, error[0],
                         image_id=image_id(engine, name))
    if name not in RECIPES:
        raise EngineError(f"`docker pull {name}` failed ({error[0]}) and there is no stand-in "
                          f"for it: pull it on a machine that reaches its registry, then "
                          f"`docker save`/`docker load` it here.")
    if labels is not None and labels.get(f"{LABEL}.recipe") == recipe_id(name):
        used = "stand-in kept"
    else:
        print(f"{name} cannot be pulled ({error[0]}): building a stand-in ...", flush=True)
        build_stand_in(engine, name)
        used = "stand-in built"
    return BaseImage(name, used, True, time.monotonic() - began, error[0],
                     list(RECIPES[name]["differences"]), image_id(engine, name))
