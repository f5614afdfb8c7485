"""What `make gpu-check` needs on a GPU machine that reaches no network, prepared here.

The GPU machine the check is made for (at hand for a few minutes at a time) runs Python 3.12.3
with a CUDA build of PyTorch 2.11, torchvision, ONNX Runtime 1.30, pandas, Pillow, grpcio and
NumPy 2.5 (its package list), and reaches no network at all, not even the package index. What
the check needs beyond that travels as files in one folder (`build/gpu-bundle/`), which together
with the working tree must stay within BUDGET_BYTES (64 MiB). The two wheels that hold the
server and perf_analyzer are 55 MB (nvidia-pytriton 0.7.0) and 14 MB (tritonclient 2.51.0):
together they do not fit, so the parts the check runs are taken out of them:

* `tritonserver.tar.xz`, from the nvidia-pytriton wheel: the `tritonserver` binary (server
  2.51.0), the Python backend, its stub for each Python version prepared, the local cache, and
  the shared libraries the wheel bundles (`nvidia_pytriton.libs/`), laid out as in the wheel so
  their RPATHs (`$ORIGIN/../../../nvidia_pytriton.libs`) still hold. Left out: pytriton's own
  Python package (the course starts the binary itself), the stubs for other Python versions, and
  the libpython 3.13 that only the 3.13 stub links.
* `perf_analyzer.tar.xz`, from the tritonclient wheel: the `tritonclient` package and
  `perf_analyzer` (not `perf_client`, a byte-identical copy), with the two libraries
  perf_analyzer links that such a machine lacks: `libb64.so.0d` (Debian's libb64-0d, taken from
  this machine) and `libcudart.so.12` (nvidia-cuda-runtime-cu12 from the course's environment;
  a CUDA 13 machine has only libcudart.so.13).
* `wheels/cp3XY/`: NumPy 1.26.4 for the model processes only (Triton 2.51's Python backend stub
  is built with pybind11 2.10, which misreads BYTES tensors under NumPy 2: python_backend#384;
  server#8301 points to the 2.51 and 2.52 release notes listing it as a known issue; the stub's
  strings name `numpy.core.multiarray`, pybind11's pre-NumPy-2 import), and the packages the
  course's code imports that such a machine may lack. `install` adds each one only where the
  machine's own Python lacks it, so the machine's versions are used wherever they exist.
* `manifest.json`: every file with its size and SHA-256, the files it was made from, and the
  Python versions it serves.

`prepare` runs here (it needs the package index); `install` runs on the GPU machine (standard
library only, no network).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import settings

#: What may travel to the GPU machine with one command: the working tree and the folders carried
#: along with it, together.
BUDGET_BYTES = 64 * 2**20
#: Where `make gpu-check-bundle` writes the bundle, and where the source wheels are kept (these
#: must not travel: the bundle alone is carried).
DEFAULT_BUNDLE = settings.ROOT / "build" / "gpu-bundle"
DEFAULT_DOWNLOADS = settings.ROOT / "build" / "gpu-bundle-downloads"
#: The GPU machine's Python (3.12.3, see the module's text).
DEFAULT_PYTHONS = ("3.12",)

SERVER_WHEEL = "nvidia-pytriton==0.7.0"
CLIENT_WHEEL = "tritonclient==2.51.0"
SERVER_ARCHIVE = "tritonserver.tar.xz"
CLIENT_ARCHIVE = "perf_analyzer.tar.xz"
MANIFEST = "manifest.json"
#: Manylinux tags a machine with glibc 2.35 or newer runs; pip matches each tag exactly.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_5_x86_64",
             "manylinux1_x86_64")
#: Where Debian and Ubuntu keep libb64 (`make system-deps` installs it here).
LIBB64 = Path("/usr/lib/x86_64-linux-gnu/libb64.so.0d")


class BundleError(RuntimeError):
    """The bundle cannot be prepared, is incomplete or does not fit; the message says what to do."""


@dataclass(frozen=True)
class Wheel:
    """One wheel that travels: the exact requirement, the module whose absence on the machine
    means it must be installed there, and why the check needs it. `stub`: installed for the
    model processes only, ahead of the machine's own copy (NumPy)."""

    requirement: str
    module: str
    why: str
    stub: bool = False

    @property
    def name(self) -> str:
        return re.split(r"[=<>!~ ]", self.requirement, maxsplit=1)[0]


_HTTP = "tritonclient.http (the course's server control)"
#: Every wheel in the bundle, per Python version. Versions: the course's pins where pyproject.toml
#: pins them, else the versions its environment runs. geventhttpclient: tritonclient 2.51 asks
#: for <=2.0.2, a pin for its HTTPS tests (client PRs #185 and #810), and 2.0.2 has no wheel for
#: Python 3.12; the check speaks plain HTTP on 127.0.0.1.
WHEELS: tuple[Wheel, ...] = (
    Wheel("numpy==1.26.4", "numpy", "the model processes: Triton 2.51's Python backend stub "
          "misreads tensors under NumPy 2 (python_backend#384)", stub=True),
    Wheel("gevent==26.9.0", "gevent", _HTTP),
    Wheel("greenlet==3.5.6", "gevent", "gevent"),
    Wheel("zope.event==6.2", "gevent", "gevent"),
    Wheel("zope.interface==8.7", "gevent", "gevent"),
    Wheel("geventhttpclient==2.3.9", "geventhttpclient", _HTTP),
    Wheel("brotli==1.2.1", "brotli", "geventhttpclient"),
    Wheel("urllib3==2.8.0", "urllib3", "geventhttpclient, tritonclient"),
    Wheel("certifi==2026.10.19.post1", "certifi", "geventhttpclient"),
    Wheel("python-rapidjson==1.25", "rapidjson", _HTTP),
    Wheel("protobuf==4.25.9", "google.protobuf", "config.pbtxt on Triton's schema"),
    Wheel("packaging==26.4", "packaging", "tritonclient.grpc"),
    Wheel("tenacity==9.2.1", "tenacity", "tritonlab.common"),
    Wheel("psutil==7.2.2", "psutil", "the embedded server's processes"),
    Wheel("tqdm==4.70.1", "tqdm", "perf runs"),
    Wheel("prometheus-client==0.26.0", "prometheus_client", "Triton's metrics"),
    Wheel("requests==2.34.2", "requests", "Triton's metrics"),
    Wheel("idna==3.20", "idna", "requests"),
    Wheel("charset-normalizer==3.5.3", "charset_normalizer", "requests"),
)
#: What the GPU machine's own Python must hold: too large to travel, and present there.
MACHINE_MODULES = {"torch": "PyTorch (a CUDA build)", "torchvision": "torchvision",
                   "PIL": "Pillow", "pandas": "pandas", "grpc": "grpcio"}


def python_tag(version: str) -> str:
    """'3.12' -> 'cp312'."""
    major, minor = version.split(".")[:2]
    return f"cp{major}{minor}"


def sha256_file(path: Path) -> str:
    """The file's SHA-256, hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# --- preparing (here, with the package index) -------------------------------------------------
def download_command(requirement: str, dest: Path, python_version: str | None) -> list[str]:
    """The `pip download` command for one wheel, without its dependencies; for `python_version`
    (e.g. '3.12') on manylinux x86_64, or for this Python when None."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--dest", str(dest)]
    if python_version:
        cmd += ["--python-version", python_version, "--implementation", "cp",
                "--abi", python_tag(python_version), "--abi", "abi3", "--abi", "none"]
        for platform in PLATFORMS:
            cmd += ["--platform", platform]
    return cmd + [requirement]


def pip_download(requirement: str, dest: Path, python_version: str | None = None) -> Path:
    """Download one wheel into `dest` (a copy already there is reused); returns its path.

    Raises BundleError with pip's last lines when the index has no matching wheel.
    """
    dest.mkdir(parents=True, exist_ok=True)
    cmd = download_command(requirement, dest, python_version)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    found = re.findall(r"(?:Saved|File was already downloaded) (\S+\.whl)", output)
    if proc.returncode != 0 or not found:
        tail = "\n".join(output.strip().splitlines()[-6:])
        raise BundleError(f"pip found no wheel for {requirement}"
                          + (f" (Python {python_version})" if python_version else "")
                          + f"; it needs the package index.\ncommand: {' '.join(cmd)}\n{tail}")
    path = Path(found[-1])
    return path if path.is_absolute() else (dest / path.name)


def server_members(names: Iterable[str], python_versions: Iterable[str]) -> list[str]:
    """The files of the nvidia-pytriton wheel that the server needs (see the module's text)."""
    stubs = tuple(f"pytriton/tritonserver/python_backend_stubs/{v}/" for v in python_versions)
    keep_libpython313 = any(v == "3.13" for v in python_versions)
    kept = []
    for name in names:
        if name.endswith("/"):
            continue
        if name.startswith("pytriton/tritonserver/python_backend_stubs/"):
            if name.startswith(stubs):
                kept.append(name)
        elif name.startswith(("pytriton/tritonserver/bin/", "pytriton/tritonserver/backends/",
                              "pytriton/tritonserver/caches/")):
            kept.append(name)
        elif name.startswith("nvidia_pytriton.libs/"):
            if keep_libpython313 or not Path(name).name.startswith("libpython3"):
                kept.append(name)
    return kept


def _zip_mode(info: zipfile.ZipInfo) -> int:
    mode = (info.external_attr >> 16) & 0o777
    return mode or 0o644


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int, mtime: float) -> None:
    import io

    entry = tarfile.TarInfo(name)
    entry.size, entry.mode, entry.mtime = len(data), mode, int(mtime)
    tar.addfile(entry, io.BytesIO(data))


def _zip_mtime(info: zipfile.ZipInfo) -> float:
    return datetime(*info.date_time, tzinfo=timezone.utc).timestamp()


def build_server_archive(wheel: Path, python_versions: Iterable[str], dest: Path) -> dict:
    """Write the server's files from the nvidia-pytriton wheel into `dest` (tar.xz), under
    `site/` as pip would install them, with its licence under `licenses/`; returns what it
    holds. Raises BundleError if a Python version has no stub in the wheel."""
    versions = list(python_versions)
    with zipfile.ZipFile(wheel) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        members = server_members(infos, versions)
        for v in versions:
            stub = f"pytriton/tritonserver/python_backend_stubs/{v}/triton_python_backend_stub"
            if stub not in infos:
                have = sorted({n.split("/")[3] for n in infos
                               if n.startswith("pytriton/tritonserver/python_backend_stubs/")
                               and n.count("/") > 3})
                raise BundleError(f"{wheel.name} has no backend stub for Python {v} (it has "
                                  f"{', '.join(have)}); prepare for one of those versions.")
        licences = [n for n in infos if "dist-info/licenses/" in n and not n.endswith("/")]
        unpacked = 0
        tmp = dest.with_name(dest.name + ".partial")
        with tarfile.open(tmp, "w:xz", preset=9) as tar:
            for name in members:
                info = infos[name]
                _add_bytes(tar, f"site/{name}", zf.read(info), _zip_mode(info), _zip_mtime(info))
                unpacked += info.file_size
            for name in licences:
                info = infos[name]
                _add_bytes(tar, f"licenses/nvidia-pytriton.{Path(name).name}", zf.read(info),
                           0o644, _zip_mtime(info))
    os.replace(tmp, dest)
    left_out = sorted(n for n in infos if not n.endswith("/") and n not in members
                      and n not in licences)
    return {"members": len(members), "unpacked_bytes": unpacked,
            "left_out": _summarise(left_out)}


def _summarise(names: list[str]) -> list[str]:
    """Left-out files grouped by folder (a wheel holds hundreds of pytriton modules)."""
    groups: dict[str, int] = {}
    for name in names:
        parts = name.split("/")
        key = "/".join(parts[:2]) + "/" if len(parts) > 2 else name
        if name.startswith("nvidia_pytriton.libs/"):
            key = name
        groups[key] = groups.get(key, 0) + 1
    return [k if n == 1 else f"{k} ({n} files)" for k, n in sorted(groups.items())]


def find_libcudart12() -> Path:
    """libcudart.so.12 from nvidia-cuda-runtime-cu12 in this environment (the course pins it)."""
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations if spec else []):
        path = Path(root) / "cuda_runtime" / "lib" / "libcudart.so.12"
        if path.exists():
            return path
    raise BundleError("libcudart.so.12 was not found (nvidia-cuda-runtime-cu12): run "
                      "`make install`, then prepare the bundle again.")


def find_libb64() -> Path:
    if LIBB64.exists():
        return LIBB64
    raise BundleError(f"{LIBB64} is missing: run `make system-deps` (apt package libb64-0d), "
                      "then prepare the bundle again.")


def build_client_archive(wheel: Path, libraries: dict[str, Path], dest: Path) -> dict:
    """Write the tritonclient package and perf_analyzer from the tritonclient wheel, and the
    `libraries` ({file name: path}) under `lib/`, into `dest` (tar.xz); returns what it holds."""
    with zipfile.ZipFile(wheel) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        data_dir = next((n.split("/")[0] for n in infos if ".data/" in n), None)
        if data_dir is None or f"{data_dir}/data/bin/perf_analyzer" not in infos:
            raise BundleError(f"{wheel.name} holds no perf_analyzer: is it tritonclient's "
                              "manylinux wheel?")
        unpacked, left_out, added = 0, [], set()
        tmp = dest.with_name(dest.name + ".partial")
        with tarfile.open(tmp, "w:xz", preset=9) as tar:
            for name, info in infos.items():
                if name.endswith("/"):
                    continue
                if name.startswith(f"{data_dir}/purelib/"):
                    target = "site/" + name.removeprefix(f"{data_dir}/purelib/")
                elif name == f"{data_dir}/data/bin/perf_analyzer":
                    target = "bin/perf_analyzer"
                elif ".dist-info/" in name and Path(name).name in ("METADATA", "WHEEL",
                                                                     "top_level.txt"):
                    target = f"site/{name}"  # so importlib.metadata reports its version
                elif Path(name).name.startswith("LICENSE"):
                    target = f"licenses/tritonclient.{Path(name).name}"
                else:
                    left_out.append(name)
                    continue
                if target in added:  # the same licence in .data and .dist-info
                    continue
                _add_bytes(tar, target, zf.read(info), _zip_mode(info), _zip_mtime(info))
                unpacked += info.file_size
                added.add(target)
            for file_name, path in libraries.items():
                data = path.read_bytes()
                _add_bytes(tar, f"lib/{file_name}", data, 0o755, path.stat().st_mtime)
                unpacked += len(data)
                added.add(f"lib/{file_name}")
    os.replace(tmp, dest)
    return {"members": len(added), "unpacked_bytes": unpacked, "left_out": left_out}


def tree_bytes(root: Path = settings.ROOT) -> int | None:
    """Bytes of the working tree that travels with the bundle: tracked files and untracked
    ones git does not ignore (None where git cannot say)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], cwd=root, capture_output=True,
                             timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    total = 0
    for name in set(filter(None, out.decode(errors="replace").split("\0"))):
        path = root / name
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def check_budget(bundle_bytes: int, tree: int | None, budget: int = BUDGET_BYTES) -> str:
    """Raise BundleError if the bundle and the working tree exceed `budget`; else a line
    saying how much room is left."""
    total = bundle_bytes + (tree or 0)
    if total > budget:
        raise BundleError(
            f"the bundle ({mib(bundle_bytes)}) and the working tree ({mib(tree or 0)}) make "
            f"{mib(total)}, over the {mib(budget)} that may travel. Prepare for fewer Python "
            "versions, or leave out a wheel the GPU machine already has.")
    return (f"{mib(bundle_bytes)} bundle + {mib(tree or 0)} working tree = {mib(total)} of "
            f"{mib(budget)} ({mib(budget - total)} left)"
            + ("" if tree is not None else "; the working tree's size is unknown (no git)"))


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _entry(path: Path, bundle: Path, **extra) -> dict:
    return {"file": str(path.relative_to(bundle)), "bytes": path.stat().st_size,
            "sha256": sha256_file(path), **extra}


def _source(path: Path) -> dict:
    return {"file": path.name, "path": str(path), "bytes": path.stat().st_size,
            "sha256": sha256_file(path)}


def prepare(bundle: Path = DEFAULT_BUNDLE, python_versions: Iterable[str] = DEFAULT_PYTHONS,
            downloads: Path = DEFAULT_DOWNLOADS,
            download: Callable[[str, Path, str | None], Path] = pip_download,
            libraries: dict[str, Path] | None = None, tree: int | None = -1,
            budget: int = BUDGET_BYTES) -> dict:
    """Fill `bundle` with what `install` needs on a GPU machine without network; returns the
    manifest it writes (`manifest.json`).

    Wheels are fetched with `download(requirement, folder, python_version)` (pip by default,
    which needs the package index) into `downloads`, which does not travel. An archive whose
    source wheel and Python versions are unchanged is kept, not rebuilt (building the server's
    takes a minute or two). `libraries`: perf_analyzer's libb64.so.0d and libcudart.so.12
    (default: found on this machine). `tree`: the working tree's bytes (-1: measured with git).
    Raises BundleError when a wheel cannot be fetched or the result exceeds `budget`.
    """
    versions = sorted(dict.fromkeys(python_versions), key=lambda v: tuple(map(int, v.split("."))))
    if not versions:
        raise BundleError("name at least one Python version (e.g. 3.12)")
    bundle.mkdir(parents=True, exist_ok=True)
    old = read_manifest(bundle, missing_ok=True) or {}
    old_archives = {a["file"]: a for a in old.get("archives", [])}
    server_wheel = download(SERVER_WHEEL, downloads, None)
    client_wheel = download(CLIENT_WHEEL, downloads, None)
    libraries = libraries or {"libb64.so.0d": find_libb64(),
                              "libcudart.so.12": find_libcudart12()}
    sources = {"nvidia-pytriton": _source(server_wheel), "tritonclient": _source(client_wheel),
               **{name: _source(path) for name, path in libraries.items()}}
    archives = []
    for file, made_from, build in (
            (SERVER_ARCHIVE, ["nvidia-pytriton"],
             lambda dest: build_server_archive(server_wheel, versions, dest)),
            (CLIENT_ARCHIVE, ["tritonclient", *libraries],
             lambda dest: build_client_archive(client_wheel, libraries, dest))):
        path = bundle / file
        key = {"sources": {s: sources[s]["sha256"] for s in made_from},
               "python_versions": versions if file == SERVER_ARCHIVE else []}
        previous = old_archives.get(file)
        if (previous and previous.get("key") == key and path.exists()
                and sha256_file(path) == previous["sha256"]):
            archives.append(previous)
            continue
        print(f"building {path} ...", flush=True)
        details = build(path)
        archives.append(_entry(path, bundle, key=key, made_from=made_from, **details))
    wheels: dict[str, list[dict]] = {}
    for version in versions:
        tag = python_tag(version)
        folder = bundle / "wheels" / tag
        folder.mkdir(parents=True, exist_ok=True)
        wanted = set()
        entries = []
        for wheel in WHEELS:
            fetched = download(wheel.requirement, downloads / tag, version)
            target = folder / fetched.name
            if not target.exists() or sha256_file(target) != sha256_file(fetched):
                shutil.copy2(fetched, target)
            wanted.add(target.name)
            entries.append(_entry(target, bundle, **asdict(wheel)))
        for stale in folder.glob("*.whl"):
            if stale.name not in wanted:
                stale.unlink()
        wheels[tag] = entries
    for stale in (bundle / "wheels").iterdir():
        if stale.is_dir() and stale.name not in wheels:
            shutil.rmtree(stale)
    bundle_bytes = (sum(a["bytes"] for a in archives)
                    + sum(w["bytes"] for ws in wheels.values() for w in ws))
    tree = tree_bytes() if tree == -1 else tree
    manifest = {
        "format": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python_versions": versions,
        "sources": sources,
        "archives": archives,
        "wheels": wheels,
        "bundle_bytes": bundle_bytes,
        "tree_bytes": tree,
        "budget_bytes": budget,
        "machine_modules": MACHINE_MODULES,
    }
    path = bundle / MANIFEST
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    manifest["bundle_bytes"] += path.stat().st_size + 200  # the manifest itself, with this line
    try:
        manifest["budget"] = check_budget(manifest["bundle_bytes"], tree, budget)
    finally:
        path.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def describe(manifest: dict) -> str:
    """The bundle as a table: each file, its size, and the total against the budget."""
    rows = [(a["file"], a["bytes"], f"from {', '.join(a.get('made_from', []))}")
            for a in manifest["archives"]]
    for tag, entries in manifest["wheels"].items():
        rows += [(f"wheels/{tag}: {w['requirement']}", w["bytes"], w["why"]) for w in entries]
    width = max(len(r[0]) for r in rows)
    lines = [f"{name:<{width}}  {size / 1e6:6.2f} MB  {why}" for name, size, why in rows]
    lines.append(f"{'total':<{width}}  {manifest['bundle_bytes'] / 1e6:6.2f} MB  "
                 f"({mib(manifest['bundle_bytes'])})")
    if manifest.get("budget"):
        lines.append(manifest["budget"])
    return "\n".join(lines)


# --- installing (on the GPU machine, no network) ----------------------------------------------
def read_manifest(bundle: Path, missing_ok: bool = False) -> dict | None:
    """The bundle's manifest; BundleError (or None with `missing_ok`) if there is none."""
    path = Path(bundle) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        if missing_ok:
            return None
        raise BundleError(f"no bundle at {bundle} ({MANIFEST} is missing). Prepare it on a "
                          "machine with the package index: `make gpu-check-bundle`, and carry "
                          "that folder along.") from None
    except ValueError as exc:
        raise BundleError(f"{path} cannot be read ({exc}): prepare the bundle again.") from None


def verify(bundle: Path, manifest: dict, version: str) -> None:
    """Raise BundleError unless every file `version` needs is present with its SHA-256."""
    entries = list(manifest["archives"]) + list(manifest["wheels"].get(python_tag(version), []))
    bad = [e["file"] for e in entries
           if not (bundle / e["file"]).is_file() or sha256_file(bundle / e["file"]) != e["sha256"]]
    if bad:
        raise BundleError(f"the bundle at {bundle} is incomplete or changed ({', '.join(bad)}): "
                          "prepare it again with `make gpu-check-bundle`.")


def has_module(name: str) -> bool:
    """True if this Python can import `name` (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def install_command(wheels: list[Path], target: Path) -> list[str]:
    """pip installing local wheels into `target`: no index, no dependencies, nothing compiled."""
    return [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile",
            "--disable-pip-version-check", "--no-cache-dir", "--quiet", "--target", str(target),
            *map(str, wheels)]


def _unzip_wheel(wheel: Path, target: Path) -> None:
    """Install a wheel by hand where this Python has no pip: its files, with `*.data/purelib`
    and `platlib` folded into the target (scripts and headers are not needed here)."""
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            parts = info.filename.split("/")
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue
                parts = parts[2:]
            if not parts or info.filename.endswith("/") or ".." in parts:
                continue
            path = target.joinpath(*parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(zf.read(info))
            path.chmod(_zip_mode(info))


def _install_wheels(wheels: list[Path], target: Path) -> str:
    target.mkdir(parents=True, exist_ok=True)
    if not wheels:
        return "nothing to install"
    if has_module("pip"):
        proc = subprocess.run(install_command(wheels, target), capture_output=True, text=True,
                              timeout=600)
        if proc.returncode != 0:
            raise BundleError(f"pip could not install {', '.join(w.name for w in wheels)} into "
                              f"{target}:\n{(proc.stdout + proc.stderr).strip()[-2000:]}")
        return "pip"
    for wheel in wheels:
        _unzip_wheel(wheel, target)
    return "unzipped (this Python has no pip)"


def _extract(archive: Path, target: Path) -> None:
    with tarfile.open(archive, "r:xz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(target, filter="data")
        else:  # Python < 3.11.4: check the names ourselves
            for member in tar.getmembers():
                if member.name.startswith("/") or ".." in Path(member.name).parts:
                    raise BundleError(f"{archive} holds an unsafe path: {member.name}")
            tar.extractall(target)


#: The Python the model processes run when the machine's NumPy is 2 or newer (see make_stub_python).
STUB_PYTHON = "stub-python"


def make_stub_python(target: Path, first: Iterable[Path]) -> Path:
    """A virtual environment whose `bin/python3` is this Python with the folders `first` ahead
    of this Python's own site-packages; returns its `bin/` folder.

    Why not PYTHONPATH: Triton's Python backend stub runs an embedded interpreter that ignores
    PYTHONPATH (seen here with Triton 2.51's stub and on a GPU machine: its `sys.path` held none of
    it). That interpreter takes the first `python3` on PATH as its own, as a virtual environment
    would, and reads that environment's site-packages, `.pth` files included. So the model
    processes get NumPy 1.26 first when this `bin/` leads PATH: the `.pth` file below lists
    `first`, then this Python's site-packages (where torch and the rest are).
    """
    import site
    import venv

    target = Path(target)
    venv.EnvBuilder(with_pip=False, symlinks=True, clear=True).create(target)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site_dir = target / "lib" / version / "site-packages"
    site_dir.mkdir(parents=True, exist_ok=True)
    own = [p for p in dict.fromkeys(site.getsitepackages()) if Path(p).is_dir()]
    lines = [str(Path(p).resolve()) for p in first] + own
    (site_dir / "tritonlab-stub.pth").write_text("\n".join(lines) + "\n")
    return target / "bin"


def install(bundle: Path = DEFAULT_BUNDLE, env: Path | None = None,
            version: str | None = None, present: Callable[[str], bool] = has_module) -> dict:
    """Install the bundle for this Python into `env` (default build/gpu-check/env), without
    network; returns what was done (also kept in `env/installed.json`).

    Layout: `site/` (the server as pytriton lays it out, tritonclient, and each wheel whose
    module `present` says this Python lacks), `stub-site/` (NumPy 1.26 for the model processes,
    where this Python's NumPy is 2 or newer) with `stub-python/`, the Python that puts it first
    (`make_stub_python`), `bin/perf_analyzer`, `lib/` (its libraries). An
    `env` installed from the same manifest for the same Python is kept as it is (idempotent).
    Raises BundleError when the bundle is missing, changed, or made for other Python versions.
    """
    bundle = Path(bundle)
    env = Path(env or settings.ROOT / "build" / "gpu-check" / "env")
    version = version or f"{sys.version_info.major}.{sys.version_info.minor}"
    manifest = read_manifest(bundle)
    if version not in manifest["python_versions"]:
        raise BundleError(
            f"the bundle at {bundle} was prepared for Python "
            f"{', '.join(manifest['python_versions'])}, and this is Python {version} "
            f"({sys.executable}). Prepare it for this version: "
            f"`make gpu-check-bundle GPU_PYTHONS=\"{version}\"`.")
    key = {"manifest_sha256": sha256_file(bundle / MANIFEST), "python": version,
           "executable": sys.executable}
    stamp = env / "installed.json"
    try:
        done = json.loads(stamp.read_text())
        if done.get("key") == key:
            return {**done, "reused": True}
    except (OSError, ValueError):
        pass
    verify(bundle, manifest, version)
    partial = env.with_name(env.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for archive in manifest["archives"]:
        _extract(bundle / archive["file"], partial)
    to_site, to_stub, from_machine = [], [], {}
    numpy_here = installed_version("numpy")
    stub_numpy_needed = numpy_here is None or int(numpy_here.split(".")[0]) >= 2
    names = {}
    for entry in manifest["wheels"][python_tag(version)]:
        path = bundle / entry["file"]
        names[path] = entry["requirement"]
        if entry.get("stub"):
            if stub_numpy_needed:
                to_stub.append(path)
            else:
                from_machine[entry["requirement"].split("==")[0]] = numpy_here
        elif present(entry["module"]):
            name = entry["requirement"].split("==")[0]
            from_machine[name] = installed_version(name) or "present"
        else:
            to_site.append(path)
    how = _install_wheels(to_site, partial / "site")
    _install_wheels(to_stub, partial / "stub-site")
    if to_stub:  # its .pth names stub-site where it will be, once `partial` becomes `env`
        make_stub_python(partial / STUB_PYTHON, [env / "stub-site"])
    done = {
        "key": key,
        "env": str(env),
        "installed": [names[p] for p in to_site],
        "stub_site": [names[p] for p in to_stub],
        "from_machine": from_machine,
        "how": how,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (partial / "installed.json").write_text(json.dumps(done, indent=1) + "\n")
    shutil.rmtree(env, ignore_errors=True)
    os.replace(partial, env)
    return {**done, "reused": False}


def process_environment(env: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment variables under which a process uses an installed bundle: `site/` first on
    PYTHONPATH, `bin/` on PATH, `lib/` on LD_LIBRARY_PATH, and TRITONLAB_STUB_PYTHON naming
    `stub-python/bin/` where it exists (the check puts it first on the PATH of the model
    processes, whose interpreter ignores PYTHONPATH: see `make_stub_python`)."""
    out = dict(os.environ if base is None else base)

    def prepend(var: str, path: Path) -> None:
        out[var] = os.pathsep.join([str(path)] + ([out[var]] if out.get(var) else []))

    prepend("PYTHONPATH", env / "site")
    prepend("PATH", env / "bin")
    prepend("LD_LIBRARY_PATH", env / "lib")
    if (env / STUB_PYTHON / "bin" / "python3").exists():
        out["TRITONLAB_STUB_PYTHON"] = str(env / STUB_PYTHON / "bin")
    return out
