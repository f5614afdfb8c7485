"""Shared fixtures: one real Triton server per test session, on free loopback ports.

A test that uses the session's server (or starts one) is marked `server` here, whatever its
module says, so `make test-fast` (`-m "not server and not notebook and not slow"`) runs only
the tests that need none.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from tritonlab.assets import blip, samples, weights
from tritonlab.assets.repository import copy_repository as make_repository
from tritonlab.assets.repository import load_model_module, model_dir
from tritonlab.common import quiet
from tritonlab.serving.embedded import EmbeddedTriton
from tritonlab.settings import TritonAddress, free_ports

# imported by the tests
__all__ = ["free_ports", "make_repository", "network_check", "tritonservers_in"]


SERVER_FIXTURES = {"triton", "repository"}  # a real server, or a repository to start one on


def pytest_collection_modifyitems(items):
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)


#: Checks that mostly wait on the package index (the GPU images' pins resolved by pip,
#: tests/test_images.py), started in one background thread as soon as the tests are collected,
#: so they wait while the other tests use the cores: {name: Future}. A test takes its result
#: with `network_check(name)`; only started when such a test was selected.
NETWORK_CHECKS: dict[str, Future] = {}


def pytest_collection_finish(session):
    selected = {item.name for item in session.items if item.path.name == "test_images.py"}
    from tritonlab.serving import images

    wanted = {f"test_every_python_pin_of_the_image_resolves[{img.name}]":
              (f"resolve_image:{img.name}", images.resolve_image, img) for img in images.IMAGES}
    wanted["test_model_analyzers_environment_resolves_in_the_triton_image"] = (
        "resolve_venvs:triton", images.resolve_venvs, images.image("triton"))
    checks = [check for test, check in wanted.items() if test in selected]
    if not checks:
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="network-check")
    for name, function, img in checks:
        NETWORK_CHECKS[name] = pool.submit(function, img)
    pool.shutdown(wait=False)


def pytest_sessionfinish(session, exitstatus):
    for future in NETWORK_CHECKS.values():
        future.cancel()  # those not started yet (a run stopped early): no need to wait for them


def network_check(name: str, function, *args):
    """The result of the background check `name` (NETWORK_CHECKS), or `function(*args)` now
    when it was not started; its exception, if it raised one."""
    future = NETWORK_CHECKS.get(name)
    return future.result() if future is not None else function(*args)


def tritonservers_in(state_dir: Path) -> list[psutil.Process]:
    """Running tritonserver and backend stub processes started from this state folder."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if (("tritonserver" in cmd or "triton_python_backend_stub" in cmd)
                and str(state_dir) in cmd and proc.info["status"] != psutil.STATUS_ZOMBIE):
            found.append(proc)
    return found


SLOW_MODEL = Path(__file__).parent / "models" / "slow_model"


def add_slow_model(repo: Path, dynamic_batching: dict | None = None, **parameters: str) -> str:
    """tests/models/slow_model copied into `repo` with its config.pbtxt: one CPU instance,
    batches of up to 8, `parameters` as the model's string parameters (model.py reads
    `seconds`, `load_seconds`, `load_talks`). Returns the model's name."""
    import shutil

    from tritonclient.grpc import model_config_pb2 as mc

    from tritonlab.serving import configs

    cfg = mc.ModelConfig(name="slow_model", backend="python", max_batch_size=8)
    cfg.input.add(name="INPUT_IMAGE", data_type=mc.TYPE_STRING, dims=[1])
    cfg.output.add(name="DONE", data_type=mc.TYPE_FP32, dims=[1])
    configs.add_instance_groups(cfg, [{"count": 1, "kind": "KIND_CPU"}])
    for key, value in parameters.items():
        cfg.parameters[key].string_value = value
    if dynamic_batching is not None:
        configs.set_dynamic_batching(cfg, dynamic_batching)
    shutil.copytree(SLOW_MODEL, repo / cfg.name, ignore=shutil.ignore_patterns("__pycache__"),
                    dirs_exist_ok=True)
    configs.write_config(cfg, repo)
    return cfg.name


@pytest.fixture(scope="session")
def weights_ready() -> dict:
    """Weights beside the served models: kept if present, else stand-ins (never the network)."""
    blip.ensure_blip(source=blip.STAND_IN)
    return weights.ensure_weights(source=weights.STAND_IN)


@pytest.fixture(scope="session")
def images() -> list[Path]:
    return samples.sample_images()


@pytest.fixture(scope="session")
def repository(tmp_path_factory, weights_ready) -> Path:
    """The session server's models. Its captioner is the tiny BLIP stand-in: these tests check
    what the server does, not how fast (the notebooks' and the bench's run the full size)."""
    repo = make_repository(tmp_path_factory.mktemp("model_repository"))
    with quiet():
        blip.ensure_blip(repo / "conditional_captioning" / "1", source=blip.STAND_IN_TINY)
    return repo


@pytest.fixture(scope="session")
def triton(repository, tmp_path_factory):
    """The session's Triton: the real embedded server, loaded with the copied repository."""
    server = EmbeddedTriton(model_repository=repository, address=TritonAddress.free(),
                            state_dir=tmp_path_factory.mktemp("state"))
    server.start()
    yield server
    server.stop()
    assert not tritonservers_in(server.state_dir), "a tritonserver outlived stop()"


@pytest.fixture(scope="session")
def classifier_code():
    """The served model.py, imported in-process as Triton's Python backend imports it."""
    return load_model_module("food_classifier")


@pytest.fixture(scope="session")
def decoding(classifier_code):
    """food_classifier's image_decoding.py, as the served model uses it."""
    return classifier_code.image_decoding


@pytest.fixture(scope="session")
def network(classifier_code):
    """food_classifier's food11_network.py, as the served model uses it."""
    return classifier_code.food11_network


@pytest.fixture(scope="session")
def helpers(classifier_code):
    """food_classifier's backend_helpers.py, as the served model uses it."""
    return classifier_code.backend_helpers


@pytest.fixture(scope="session")
def reference(network, weights_ready):
    """The same code and weights as the served model, run in-process: the expected answers."""
    return network.Food11Classifier(str(model_dir("food_classifier")))
