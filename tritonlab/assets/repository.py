"""The model repository as files: where each model's version folder is, its code imported
in-process exactly as Triton's Python backend imports it, the code two models share, and
private copies of the repository for tests and `make bench`."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import threading
from pathlib import Path
from types import ModuleType

from .. import settings
from ..common import atomic_write

#: Files of food_classifier's version folder that other models use, and where copies go. Each
#: model folder must work alone (Triton's Python backend imports only its own folder), so
#: these are copied, with a banner, by `make configs`; never edit a copy.
SHARED_MODEL_CODE = {"image_decoding.py": ("conditional_captioning",),
                     "backend_helpers.py": ("conditional_captioning",)}
SHARED_CODE_BANNER = (
    "# GENERATED FILE: a copy of model_repository/food_classifier/1/{file}, written by\n"
    "# `make configs` (tritonlab.assets.repository.write_shared_code). Edit that file, not this "
    "copy.\n")


def model_dir(name: str, version: int = 1, repository: Path | None = None) -> Path:
    """The version folder Triton loads for `name`: `model_repository/<name>/<version>/`."""
    return Path(repository or settings.model_repository()) / name / str(version)


#: Held while a model's code is imported: its module sits in sys.modules before its code has
#: run, and sys.path is changed meanwhile, so a second thread (the API answers uploads in a
#: thread pool) must wait for the whole import, not see a half-loaded module.
_IMPORTING = threading.RLock()


def load_model_module(name: str, version: int = 1, repository: Path | None = None) -> ModuleType:
    """The model's `model.py` as a module: the exact code Triton runs, without Triton.

    As Triton's Python backend does, the version folder is on the import path while model.py
    runs, so its `import image_decoding` finds the file beside it. Those files are kept apart
    per model folder: the modules they become are reached as attributes of the returned module
    (`load_model_module("food_classifier").food11_network`), never through `sys.modules`.
    Imported once per process, whichever thread asks first; the others wait for it.
    """
    folder = model_dir(name, version, repository)
    path = folder / "model.py"
    key = f"tritonlab_served_{name}_{version}_{abs(hash(str(path)))}"
    with _IMPORTING:
        if key in sys.modules:
            return sys.modules[key]
        return _import(key, path, folder)


def _import(key: str, path: Path, folder: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(key, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    siblings = {p.stem for p in folder.glob("*.py")} - {"model"}
    saved = {n: sys.modules.pop(n) for n in siblings if n in sys.modules}
    sys.path.insert(0, str(folder))
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[key]
        raise
    finally:
        sys.path.remove(str(folder))
        for n in siblings:
            sys.modules.pop(n, None)
        sys.modules.update(saved)
    return module


def classifier_module(repository: Path | None = None) -> ModuleType:
    """`model_repository/food_classifier/1/model.py` (of `repository`, default the served one);
    its files are its attributes: `.image_decoding`, `.food11_network`, `.backend_helpers`."""
    return load_model_module("food_classifier", repository=repository)


def decoding(repository: Path | None = None) -> ModuleType:
    """food_classifier's `image_decoding.py`: bytes to pixels, as both served models decode."""
    return classifier_module(repository).image_decoding


def network(repository: Path | None = None) -> ModuleType:
    """food_classifier's `food11_network.py`: labels, weights, `Food11Classifier`."""
    return classifier_module(repository).food11_network


def shared_code(repository: Path | None = None) -> dict[Path, str]:
    """What each generated copy of shared model code must hold, by its path."""
    source = model_dir("food_classifier", repository=repository)
    out = {}
    for file, models in SHARED_MODEL_CODE.items():
        text = SHARED_CODE_BANNER.format(file=file) + (source / file).read_text()
        for name in models:
            out[model_dir(name, repository=repository) / file] = text
    return out


def write_shared_code(repository: Path | None = None) -> list[Path]:
    """Write (or refresh) the generated copies of shared model code; returns their paths."""
    written = []
    for path, text in shared_code(repository).items():
        if not path.exists() or path.read_text() != text:
            atomic_write(path, text)
        written.append(path)
    return written


COURSE_MODELS = ("food_classifier", "conditional_captioning", "food_captioning")


def copy_repository(root: Path, names: tuple[str, ...] = COURSE_MODELS) -> Path:
    """A private copy of the course's models (tests and `make bench` rewrite configs in it).

    Files a notebook generates (the ONNX export) are left out, so a copy starts as a fresh clone.
    Weight files (`*.safetensors`, nearly 1 GB for BLIP), which nothing rewrites, are hard
    links where the file system allows them.
    """
    for name in names:
        shutil.copytree(settings.MODEL_REPOSITORY / name, Path(root) / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.onnx", "*.onnx.json",
                                                      ".blip-*"),
                        copy_function=_link_weights)
    return Path(root)


def _link_weights(source: str, target: str) -> None:
    if source.endswith(".safetensors"):
        try:
            os.link(source, target)
            return
        except OSError:  # another file system, or links not allowed: copy
            pass
    shutil.copy2(source, target)


def repository_tree(repository: Path | None = None) -> str:
    """The model repository as an indented file list, the way Triton sees it."""
    root = Path(repository or settings.model_repository())
    lines = [f"{root.name}/"]

    def walk(folder: Path, depth: int) -> None:
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith(".") or entry.name == "__pycache__":
                continue
            size = "" if entry.is_dir() else f"  ({entry.stat().st_size:,} bytes)"
            lines.append("    " * depth + entry.name + ("/" if entry.is_dir() else "") + size)
            if entry.is_dir():
                walk(entry, depth + 1)

    walk(root, 1)
    return "\n".join(lines)
