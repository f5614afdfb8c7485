"""The GPU node's two images, checked without building them: every Python pin resolves on the
package index for the image's Python and platform, and every apt package exists in the release
its base image installs from.

Each image installs its Python packages from one file its Dockerfile copies, and the check reads
that very file: `requirements/triton-image.txt` for Dockerfile.triton, and the `[project]
dependencies` of pyproject.toml for Dockerfile.jupyter (whose pip step is `pip install -e .`).
A virtual environment of its own in an image (Model Analyzer's in the Triton image) installs from
a file of its own, resolved on its own.
pip's own resolver answers (`pip install --dry-run --report`: nothing is installed, and with
PyPI's metadata files only metadata is downloaded), for wheels only, with the image's Python
version and manylinux platform tags. This machine's pip configuration (local wheel folders,
mirrors, constraint files) is left out, so the answer is the public index's, the one the image
build asks. apt package names are looked up in the release's `Packages` lists (the Debian or
Ubuntu archive).

Where the index or the archive cannot be reached, `Unreachable` says so: the tests skip with
that reason; nothing passes unchecked in silence. `python -m tritonlab.serving.images` runs the
whole check and prints what resolved.
"""

from __future__ import annotations

import functools
import json
import lzma
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .. import settings
from ..common import log

PYPI = "https://pypi.org/simple"
DEBIAN = "http://deb.debian.org/debian"
UBUNTU = "http://archive.ubuntu.com/ubuntu"
#: `pip install --dry-run` and `--report` appeared in pip 22.2.
MIN_PIP = (22, 2)
#: pip settings of this machine the check keeps: how to reach the network, never where packages
#: come from (PIP_FIND_LINKS, PIP_EXTRA_INDEX_URL, PIP_CONSTRAINT and the like are dropped).
NETWORK_PIP_VARIABLES = ("PIP_CERT", "PIP_CLIENT_CERT", "PIP_PROXY", "PIP_TRUSTED_HOST",
                         "PIP_DEFAULT_TIMEOUT", "PIP_TIMEOUT", "PIP_RETRIES")
#: Lines of pip's output that mean the index was not reached, rather than a pin not found.
NETWORK_ERRORS = ("Could not fetch URL", "NewConnectionError", "Max retries exceeded",
                  "ProxyError", "SSLError", "ConnectTimeout", "ReadTimeout",
                  "Temporary failure in name resolution", "Name or service not known",
                  "Network is unreachable", "Connection refused")
#: pip install options that take a value (so the value is not read as a package name).
PIP_VALUE_OPTIONS = {"-r", "--requirement", "-c", "--constraint", "-i", "--index-url",
                     "--extra-index-url", "-f", "--find-links", "-e", "--editable",
                     "-t", "--target", "--prefix", "--root", "--python-version", "--platform",
                     "--implementation", "--abi", "--progress-bar", "--cache-dir"}
#: Options that would make a build ask another index than the one the check asks.
PIP_INDEX_OPTIONS = {"-c", "--constraint", "-i", "--index-url", "--extra-index-url", "-f",
                     "--find-links", "--no-index"}


class ImageCheckError(RuntimeError):
    """An image would not build as written (a pin that does not resolve, an apt package its
    release lacks, a Dockerfile the check cannot read); the message says what to change."""


class Unreachable(RuntimeError):
    """The package index or the apt archive could not be reached: nothing was checked."""


@dataclass(frozen=True)
class Image:
    """One image of the GPU node, and the facts of its base image that decide what installs."""

    name: str
    dockerfile: str            # from the course root
    base: str                  # the image its FROM names
    python: str                # the base's Python, major.minor
    glibc: tuple[int, int]     # the base's glibc: the newest manylinux tag a wheel may carry
    requirements: str          # what its pip step installs: a requirements file or pyproject.toml
    venvs: tuple[str, ...] = ()  # requirements files of virtual environments of their own
    apt_lists: tuple[str, ...] = ()  # the `Packages.xz` lists its apt-get installs from (amd64)
    cuda: str | None = None    # CUDA major.minor the base ships: torch's CUDA runtime must match
    cudnn: str | None = None   # cuDNN major the base ships: torch's cuDNN must match
    facts: str = ""            # where the facts above come from

    @property
    def path(self) -> Path:
        return settings.ROOT / self.dockerfile


def _apt_lists(archive: str, release: str, components: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{archive}/dists/{release}/{c}/binary-amd64/Packages.xz" for c in components)


IMAGES = (
    Image("triton", "Dockerfile.triton", "nvcr.io/nvidia/tritonserver:24.10-py3",
          python="3.10", glibc=(2, 35), requirements="requirements/triton-image.txt",
          venvs=("requirements/model-analyzer.txt",),
          apt_lists=_apt_lists(UBUNTU, "jammy", ("main", "universe")), cuda="12.6", cudnn="9",
          facts="Triton Inference Server Release 24.10 notes (docs.nvidia.com/deeplearning/"
                "triton-inference-server/release-notes/rel-24-10.html): Ubuntu 22.04 with "
                "Python 3.10, CUDA 12.6.2, cuDNN 9.5.0.50; Ubuntu 22.04's glibc is 2.35 (cuDNN "
                "9.5.0 support matrix)"),
    Image("jupyter", "Dockerfile.jupyter", "python:3.11-slim-bookworm",
          python="3.11", glibc=(2, 36), requirements="pyproject.toml",
          apt_lists=_apt_lists(DEBIAN, "bookworm", ("main",)),
          facts="the image's tag: Python 3.11 on Debian 12 (bookworm, apt from its main "
                "component); Debian 12's glibc is 2.36 (cuDNN 9.5.0 support matrix)"),
)


def image(name: str) -> Image:
    """The image called `name` ('triton' or 'jupyter')."""
    for img in IMAGES:
        if img.name == name:
            return img
    raise KeyError(f"no image {name!r}: the images are {[i.name for i in IMAGES]}")


# --- reading a Dockerfile -------------------------------------------------------------------

def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    result, current = [], ""
    for raw in Path(path).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current += " " + line.removesuffix("\\").strip()
        if not line.endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
            current = ""
    return result


def _commands(run: str) -> list[list[str]]:
    """The shell commands of one RUN line, split on && ; || |, each as a list of words."""
    commands = []
    for part in re.split(r"&&|\|\||;|\|", run):
        try:
            words = shlex.split(part)
        except ValueError:  # a quote spanning a split point: plain words are enough here
            words = part.split()
        if words:
            commands.append(words)
    return commands


def _after(words: list[str], program: tuple[str, ...], verb: str) -> list[str] | None:
    """The words after `<program> ... <verb>` in one command, or None if it is not one."""
    for i, word in enumerate(words):
        if Path(word).name in program:
            if verb in words[i + 1:]:
                return words[words.index(verb, i + 1) + 1:]
            return None
    return None


def _installs(img: Image, tools: tuple[str, ...]) -> list[list[str]]:
    """The words after `<tool> install` in each RUN command of the image's Dockerfile that
    runs one of `tools`."""
    steps = []
    for word, args in instructions(img.path):
        if word == "RUN":
            for command in _commands(args):
                rest = _after(command, tools, "install")
                if rest is not None:
                    steps.append(rest)
    return steps


def apt_packages(img: Image) -> list[str]:
    """The package names every `apt-get install` of the image's Dockerfile names."""
    return [w for step in _installs(img, ("apt-get", "apt")) for w in step
            if not w.startswith("-")]


def _pip_installs(img: Image) -> list[list[str]]:
    """The words after `pip install` in each pip step of the image's Dockerfile."""
    return _installs(img, ("pip", "pip3"))


def check_base(img: Image) -> None:
    """The Dockerfile builds FROM the base whose facts the check knows. Raises ImageCheckError."""
    froms = [[t for t in args.split() if not t.startswith("--")][0]
             for word, args in instructions(img.path) if word == "FROM"]
    if froms != [img.base]:
        raise ImageCheckError(
            f"{img.dockerfile} builds FROM {', '.join(froms) or 'nothing'}, but the check knows "
            f"the facts of {img.base} ({img.facts}). Update IMAGES in {Path(__file__).name} "
            "(Python, glibc, CUDA, apt lists) for the new base, then run the check again.")


def check_pip_steps(img: Image) -> None:
    """Every pip step of the Dockerfile installs one of the files the check reads (the image's
    requirements, or a virtual environment's), copied into the image, and nothing else, from the
    index the check asks; and each of those files is installed. Raises ImageCheckError."""
    copied = {}  # source -> where the COPY puts it
    for word, args in instructions(img.path):
        if word == "COPY":
            parts = [p for p in args.split() if not p.startswith("--")]
            dest = parts[-1]
            for src in parts[:-1]:
                copied[src] = dest + Path(src).name if dest.endswith("/") else dest
    steps = _pip_installs(img)
    for required in (img.requirements, *img.venvs):
        if required not in copied or not steps:
            raise ImageCheckError(
                f"{img.dockerfile} does not COPY {required} and pip-install it: the check "
                "reads that file, so the build must install exactly it.")
    # a requirements file by where it was copied; pyproject.toml as the project's folder
    expected = ({copied[img.requirements]} if img.requirements.endswith(".txt")
                else {".", "./"}) | {copied[venv] for venv in img.venvs}
    installed = set()
    for words in steps:
        targets, i = [], 0
        while i < len(words):
            word = words[i]
            if word in PIP_INDEX_OPTIONS:
                raise ImageCheckError(
                    f"{img.dockerfile}: `pip install {' '.join(words)}` uses {word}, but the "
                    f"check asks {PYPI} alone: keep every package on that index.")
            if word in PIP_VALUE_OPTIONS:
                if word in ("-r", "--requirement", "-e", "--editable"):
                    targets.append(words[i + 1] if i + 1 < len(words) else "")
                i += 2
                continue
            if not word.startswith("-"):
                targets.append(word)
            i += 1
        outside = [t for t in targets if t not in expected]
        if outside or not targets:
            raise ImageCheckError(
                f"{img.dockerfile}: `pip install {' '.join(words)}` installs "
                f"{', '.join(outside) or 'nothing'} outside "
                f"{' and '.join((img.requirements, *img.venvs))}: put every pin in those files, "
                "so that the check reads what the build installs.")
        installed.update(targets)
    for venv in img.venvs:
        if copied[venv] not in installed:
            raise ImageCheckError(f"{img.dockerfile} copies {venv} but never pip-installs it.")


def pip_arguments(img: Image) -> list[str]:
    """What the check passes to pip for the image: `-r <file>`, or the project's dependencies
    from pyproject.toml (`pip install -e .` installs those and the package itself)."""
    path = settings.ROOT / img.requirements
    if path.suffix == ".txt":
        return ["-r", str(path)]
    import tomllib  # Python 3.11 and later

    return list(tomllib.loads(path.read_text())["project"]["dependencies"])


# --- the package index ----------------------------------------------------------------------

def platform_tags(glibc: tuple[int, int], arch: str = "x86_64") -> list[str]:
    """The manylinux tags a wheel may carry to install on that glibc, newest first.

    pip expands none of `manylinux_2_X` given with `--platform` to older tags, so each is listed.
    """
    major, minor = glibc
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    return tags + [f"{name}_{arch}" for m, name in legacy.items() if m <= minor]


def _pip_environment() -> dict[str, str]:
    """This process's environment without the pip settings that choose where packages come
    from: no configuration file, and only the PIP_ variables that say how to reach the network."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") or k in NETWORK_PIP_VARIABLES}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def probe(url: str, timeout: float = 20.0) -> None:
    """Raise Unreachable unless `url` answers (a 4xx answer counts: the server is there)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        if exc.code < 500:
            return
        reason = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = str(getattr(exc, "reason", exc))
    raise Unreachable(f"{url} cannot be reached from here ({reason}); nothing was checked.")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pin_error(output: str, python: str, glibc: tuple[int, int]) -> ImageCheckError | None:
    """A clear error for pip's 'no such version' or 'conflicting dependencies' output."""
    where = f"Python {python} on manylinux x86_64 (glibc {glibc[0]}.{glibc[1]}), wheels only"
    missing = re.findall(r"Could not find a version that satisfies the requirement (\S+) "
                         r"\(from versions: ([^)]*)\)", output)
    if missing:
        lines = []
        for requirement, versions in missing:
            available = [v for v in (w.strip() for w in versions.split(",")) if v and v != "none"]
            pinned = re.split(r"[=<>!~]=?", requirement, maxsplit=1)[-1]
            near = [v for v in available if v.startswith(pinned.rsplit(".", 1)[0] + ".")]
            shown = near or available[-10:]
            lines.append(f"{requirement}: not on the index for {where}; "
                         + (f"it has {', '.join(shown)}" if shown else "it has no wheel at all"))
        return ImageCheckError("; ".join(lines) + ". Pin a version that exists.")
    if "conflicting dependencies" in output or "ResolutionImpossible" in output:
        start = output.find("The conflict is caused by")
        cause = (output[start:] if start >= 0 else output).strip()
        return ImageCheckError(f"the pins conflict for {where}:\n{cause[:2000]}")
    return None


def resolve(requirements: list[str], python: str, glibc: tuple[int, int],
            index_url: str = PYPI, timeout: float = 600.0) -> dict[str, str]:
    """What pip would install for `requirements` on that Python and glibc: {name: version}.

    `requirements` are pip arguments (`["-r", file]` or requirement strings). Only wheels are
    accepted; nothing is installed (about 20 s for the Triton image, 40 to 60 s for the Jupyter
    image's 192 packages, from PyPI's metadata files). Raises ImageCheckError
    naming each requirement that does not resolve and the versions the index has, and
    Unreachable when the index cannot be reached.
    """
    if tuple(int(p) for p in metadata.version("pip").split(".")[:2]) < MIN_PIP:
        raise ImageCheckError(f"pip {metadata.version('pip')} has no `install --dry-run "
                              f"--report`: upgrade it ({sys.executable} -m pip install -U pip).")
    probe(f"{index_url.rstrip('/')}/pip/")
    with tempfile.TemporaryDirectory(prefix="tritonlab-pins-") as tmp:
        report = Path(tmp) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                   "--quiet", "--only-binary=:all:", "--implementation", "cp",
                   "--python-version", python,
                   *[arg for tag in platform_tags(glibc) for arg in ("--platform", tag)],
                   "--index-url", index_url, "--target", str(Path(tmp) / "never-written"),
                   "--retries", "2", "--timeout", "30", "--report", str(report), *requirements]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                  env=_pip_environment(), cwd=tmp)
        except subprocess.TimeoutExpired:
            raise Unreachable(f"pip did not finish resolving within {timeout:.0f} s (a slow or "
                              f"stalled connection to {index_url}); nothing was checked.") from None
        output = done.stdout + done.stderr
        if done.returncode != 0:
            lost = [ln.strip() for ln in output.splitlines()
                    if any(e in ln for e in NETWORK_ERRORS)]
            if lost:
                raise Unreachable(f"pip could not reach {index_url} ({lost[0][:300]}); "
                                  "nothing was checked.")
            raise _pin_error(output, python, glibc) or ImageCheckError(
                "pip could not resolve the pins:\n" + "\n".join(output.splitlines()[-15:]))
        installs = json.loads(report.read_text())["install"]
    return {_normalise(item["metadata"]["name"]): item["metadata"]["version"]
            for item in installs}


def check_cuda(img: Image, resolved: dict[str, str]) -> None:
    """torch's CUDA runtime and cuDNN (pip packages it requires) match the base's CUDA and
    cuDNN: the P100 needs the CUDA 12.6 build (sm_60 kernels). Raises ImageCheckError."""
    if not img.cuda or "torch" not in resolved:
        return
    runtime = resolved.get("nvidia-cuda-runtime-cu12", "none")
    cudnn = resolved.get("nvidia-cudnn-cu12", "none")
    if not runtime.startswith(img.cuda + ".") or cudnn.split(".")[0] != img.cudnn:
        raise ImageCheckError(
            f"torch {resolved['torch']} brings CUDA runtime {runtime} and cuDNN {cudnn}, but "
            f"{img.base} ships CUDA {img.cuda} and cuDNN {img.cudnn}.x ({img.facts}): pin the "
            f"torch release whose PyPI wheel is the CUDA {img.cuda} build.")


def resolve_venvs(img: Image, index_url: str = PYPI) -> dict[str, dict[str, str]]:
    """Every package each virtual environment of the image would get, {file: {name: version}},
    each file resolved on its own for the image's Python and glibc. Raises ImageCheckError or
    Unreachable (see `resolve`)."""
    check_pip_steps(img)
    return {venv: resolve(["-r", str(settings.ROOT / venv)], img.python, img.glibc,
                          index_url=index_url) for venv in img.venvs}


def resolve_image(img: Image, index_url: str = PYPI) -> dict[str, str]:
    """Every Python package the image's build would install, {name: version}, after checking
    that its Dockerfile installs the file read here and that torch matches its CUDA.
    Raises ImageCheckError or Unreachable (see `resolve`)."""
    check_base(img)
    check_pip_steps(img)
    started = time.monotonic()
    resolved = resolve(pip_arguments(img), img.python, img.glibc, index_url=index_url)
    check_cuda(img, resolved)
    log.info(f"{img.name}: {len(resolved)} packages resolve for Python {img.python}, glibc "
             f"{img.glibc[0]}.{img.glibc[1]} ({time.monotonic() - started:.0f} s)")
    return resolved


# --- apt ------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def apt_list(url: str, timeout: float = 60.0) -> dict[str, str]:
    """{package: version} of one `Packages.xz` list of an apt archive (about 9 MB for Debian 12
    main, amd64). Raises Unreachable when it cannot be fetched."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data = resp.read()
    except (urllib.error.URLError, OSError) as exc:
        raise Unreachable(f"{url} cannot be reached from here "
                          f"({getattr(exc, 'reason', exc)}); the apt packages were not checked."
                          ) from None
    packages, name = {}, None
    for line in lzma.decompress(data).decode("utf-8", "replace").splitlines():
        if line.startswith("Package: "):
            name = line.split(None, 1)[1]
        elif line.startswith("Version: ") and name:
            packages.setdefault(name, line.split(None, 1)[1])
    return packages


def check_apt(img: Image, names: list[str] | None = None) -> dict[str, str]:
    """The version each apt package of the image (or `names`) has in its base's release,
    {name: version}. Raises ImageCheckError naming those the release lacks, Unreachable when
    a list cannot be fetched."""
    check_base(img)
    names = apt_packages(img) if names is None else names
    if not names:
        return {}
    available: dict[str, str] = {}
    for url in img.apt_lists:
        available = {**apt_list(url), **available}
    missing = [n for n in names if n not in available]
    if missing:
        raise ImageCheckError(
            f"{img.dockerfile} installs {', '.join(missing)}, which {img.base}'s release does "
            f"not have (looked up in {', '.join(img.apt_lists)}): find the package's name in "
            "that release.")
    return {n: available[n] for n in names}


def main(argv: list[str] | None = None) -> int:
    """Check every image; print what resolved, what failed and what could not be checked."""
    failures = skipped = 0
    for img in IMAGES:
        def venvs(img: Image) -> dict[str, str]:
            return {f"{venv}: {name}": version for venv, found in resolve_venvs(img).items()
                    for name, version in found.items()}

        for what, check in (("Python pins", resolve_image), ("virtual environments", venvs),
                            ("apt packages", check_apt)):
            try:
                found = check(img)
            except Unreachable as exc:
                skipped += 1
                log.info(f"NOT CHECKED {img.name} {what}: {exc}")
            except ImageCheckError as exc:
                failures += 1
                log.info(f"FAILED {img.name} {what}: {exc}")
            else:
                listed = ", ".join(f"{k}=={v}" for k, v in sorted(found.items())) or "none"
                log.info(f"ok {img.name} {what}: {listed}")
    log.info(f"{failures} failed, {skipped} not checked (unreachable).")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
