"""Import a model's own `model.py` from the model repository, to run its code in-process."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

from . import settings


def model_dir(name: str, version: int = 1, repository: Path | None = None) -> Path:
    """The version folder Triton loads for `name`: `model_repository/<name>/<version>/`."""
    return Path(repository or settings.model_repository()) / name / str(version)


def load_model_module(name: str, version: int = 1, repository: Path | None = None) -> ModuleType:
    """The model's `model.py` as a module: the exact code Triton runs, without Triton."""
    path = model_dir(name, version, repository) / "model.py"
    key = f"tritonlab_served_{name}_{version}_{abs(hash(str(path)))}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


COURSE_MODELS = ("food_classifier", "conditional_captioning", "food_captioning")


def copy_repository(root: Path, names: tuple[str, ...] = COURSE_MODELS) -> Path:
    """A private copy of the course's models (tests and `make bench` rewrite configs in it).

    Files a notebook generates (the ONNX export) are left out, so a copy starts as a fresh clone.
    """
    for name in names:
        shutil.copytree(settings.MODEL_REPOSITORY / name, Path(root) / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.onnx", "*.onnx.json",
                                                      ".blip-*"))
    return Path(root)


def classifier_module() -> ModuleType:
    """`model_repository/food_classifier/1/model.py`."""
    return load_model_module("food_classifier")


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
