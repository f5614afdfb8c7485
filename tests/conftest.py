"""Shared fixtures: one real Triton server per test session, on free loopback ports."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import psutil
import pytest

from tritonlab import captioning, samples, settings, weights
from tritonlab.models import load_model_module, model_dir
from tritonlab.server import LocalTriton
from tritonlab.settings import Ports


def free_ports(count: int = 3) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tritonservers_in(state_dir: Path) -> list[psutil.Process]:
    """Running tritonserver and backend stub processes started from this state folder."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if (("tritonserver" in cmd or "triton_python_backend_stub" in cmd)
                and str(state_dir) in cmd and proc.info["status"] != psutil.STATUS_ZOMBIE):
            found.append(proc)
    return found


COURSE_MODELS = ("food_classifier", "conditional_captioning", "food_captioning")


def make_repository(root: Path, names: tuple[str, ...] = COURSE_MODELS) -> Path:
    """A private model repository with copies of the course's models (tests may rewrite it)."""
    for name in names:
        # generated files that a notebook makes (the ONNX export) are left out on purpose
        shutil.copytree(settings.MODEL_REPOSITORY / name, root / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.onnx", "*.onnx.json",
                                                      ".blip-*"))
    return root


@pytest.fixture(scope="session")
def weights_ready() -> dict:
    """Weights beside the served models: kept if present, else stand-ins (never the network)."""
    captioning.ensure_blip(source=captioning.STAND_IN, quiet=True)
    return weights.ensure_weights(source=weights.STAND_IN, quiet=True)


@pytest.fixture(scope="session")
def images() -> list[Path]:
    return samples.sample_images()


@pytest.fixture(scope="session")
def repository(tmp_path_factory, weights_ready) -> Path:
    return make_repository(tmp_path_factory.mktemp("model_repository"))


@pytest.fixture(scope="session")
def triton(repository, tmp_path_factory):
    """The session's Triton: the real embedded server, loaded with the copied repository."""
    server = LocalTriton(model_repository=repository, ports=Ports(*free_ports()),
                         state_dir=tmp_path_factory.mktemp("state"), quiet=True)
    server.start()
    yield server
    server.stop()
    assert not tritonservers_in(server.state_dir), "a tritonserver outlived stop()"


@pytest.fixture(scope="session")
def classifier_code():
    """The served model.py, imported in-process."""
    return load_model_module("food_classifier")


@pytest.fixture(scope="session")
def reference(classifier_code, weights_ready):
    """The same code and weights as the served model, run in-process: the expected answers."""
    return classifier_code.Food11Classifier(str(model_dir("food_classifier")))
