"""Shared fixtures: one real Triton server per test session, on free loopback ports."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from tritonlab import captioning, samples, weights
from tritonlab.models import copy_repository as make_repository  # noqa: F401 (tests import it)
from tritonlab.models import load_model_module, model_dir
from tritonlab.server import LocalTriton
from tritonlab.settings import Ports, free_ports  # noqa: F401 (tests import free_ports)


def tritonservers_in(state_dir: Path) -> list[psutil.Process]:
    """Running tritonserver and backend stub processes started from this state folder."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if (("tritonserver" in cmd or "triton_python_backend_stub" in cmd)
                and str(state_dir) in cmd and proc.info["status"] != psutil.STATUS_ZOMBIE):
            found.append(proc)
    return found


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
