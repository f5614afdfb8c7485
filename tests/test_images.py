"""The GPU node's images, checked without building them (tritonlab.serving.images): every Python
pin resolves on the package index for the image's Python and platform, every apt package exists
in the base image's release, and each Dockerfile installs exactly the file the check reads.

Tests marked `network` ask the public package index (pypi.org) and Debian's archive; where
those cannot be reached they are skipped with the reason, never passed unchecked.
"""

from __future__ import annotations

import dataclasses
import os
import re

import pytest

from tritonlab import settings
from tritonlab.serving import images

from .conftest import network_check

TRITON = images.image("triton")
JUPYTER = images.image("jupyter")


def asked(function, *args, **kwargs):
    """Call a check that needs the network; skip the test, saying why, when it is unreachable."""
    try:
        return function(*args, **kwargs)
    except images.Unreachable as exc:
        pytest.skip(str(exc))


def pins(img: images.Image) -> dict[str, str]:
    """{name: version} of the `name==version` lines the image's pip step installs."""
    if img.requirements.endswith(".txt"):
        lines = (settings.ROOT / img.requirements).read_text().splitlines()
    else:
        lines = images.pip_arguments(img)
    found = {}
    for line in lines:
        match = re.match(r"\s*([A-Za-z0-9_.-]+)(\[[^]]*\])?\s*==\s*([^\s;#]+)", line)
        if match:
            found[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[3]
    return found


@pytest.mark.network
@pytest.mark.parametrize("img", images.IMAGES, ids=lambda i: i.name)
def test_every_python_pin_of_the_image_resolves(img):
    # resolved in the background since collection (conftest.NETWORK_CHECKS)
    resolved = asked(network_check, f"resolve_image:{img.name}", images.resolve_image, img)
    expected = pins(img)
    assert expected, f"no pins read for {img.name}"
    assert {name: resolved.get(name) for name in expected} == expected
    if img is TRITON:
        # the CUDA 12.6 build of torch, and an ONNX Runtime for CUDA 12 / cuDNN 9
        assert resolved["nvidia-cuda-runtime-cu12"].startswith("12.6.")
        assert resolved["nvidia-cudnn-cu12"].startswith("9.")
        assert resolved["onnxruntime-gpu"] == "1.20.2"


@pytest.mark.network
def test_a_pin_that_does_not_exist_is_named_with_the_versions_that_do(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("pillow==11.3.0\nonnxruntime-gpu==1.20.1\n")
    with pytest.raises(images.ImageCheckError) as info:
        asked(images.resolve, ["-r", str(requirements)], TRITON.python, TRITON.glibc)
    message = str(info.value)
    assert "onnxruntime-gpu==1.20.1" in message and "Python 3.10" in message
    assert "1.20.0" in message and "1.20.2" in message
    assert "pillow" not in message  # only what fails is named


@pytest.mark.network
def test_the_apt_packages_exist_in_the_base_release():
    found = asked(images.check_apt, JUPYTER)
    assert sorted(found) == sorted(["libb64-0d", "libpython3.11", "make", "docker.io", "nginx"])
    assert all(found.values())
    with pytest.raises(images.ImageCheckError, match="no-such-package-in-bookworm"):
        asked(images.check_apt, JUPYTER, ["make", "no-such-package-in-bookworm"])


def test_an_unreachable_index_is_reported_not_passed():
    # a closed port on this machine: fails at once, and no traffic leaves the machine
    with pytest.raises(images.Unreachable, match="nothing was checked"):
        images.resolve(["pillow==11.3.0"], "3.10", (2, 35), index_url="http://127.0.0.1:9/simple")
    with pytest.raises(images.Unreachable, match="not checked"):
        images.apt_list("http://127.0.0.1:9/debian/dists/bookworm/main/binary-amd64/Packages.xz")


def test_the_machines_own_package_sources_are_left_out(monkeypatch):
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///opt/pypi/simple")
    monkeypatch.setenv("PIP_CONSTRAINT", "/etc/constraints.txt")
    monkeypatch.setenv("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt")
    env = images._pip_environment()
    assert env["PIP_CONFIG_FILE"] == os.devnull  # pip reads no configuration file at all
    assert not {"PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT"} & set(env)
    assert env["PIP_CERT"] == "/etc/ssl/certs/ca-certificates.crt"


def test_platform_tags_cover_every_older_manylinux():
    tags = images.platform_tags((2, 35))
    assert tags[0] == "manylinux_2_35_x86_64"
    for tag in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                "manylinux2010_x86_64", "manylinux1_x86_64", "manylinux_2_5_x86_64"):
        assert tag in tags
    assert "manylinux_2_36_x86_64" not in tags


def test_the_dockerfiles_install_exactly_what_the_check_reads():
    for img in images.IMAGES:
        images.check_base(img)
        images.check_pip_steps(img)
    assert images.apt_packages(JUPYTER) == ["libb64-0d", "libpython3.11", "make", "docker.io",
                                            "nginx"]
    assert images.apt_packages(TRITON) == ["python3-venv", "libb64-0d"]
    assert TRITON.venvs == ("requirements/model-analyzer.txt",)
    assert images.pip_arguments(TRITON) == ["-r", str(settings.ROOT / TRITON.requirements)]
    assert "nvidia-pytriton==0.7.0" in images.pip_arguments(JUPYTER)


@pytest.mark.parametrize("run, error", [
    ("pip install -r /tmp/triton-image.txt && pip install foo==1", "installs foo==1 outside"),
    ("pip install --extra-index-url https://example.org/simple -r /tmp/triton-image.txt",
     "--extra-index-url"),
    ("pip install -r /tmp/other.txt", "installs /tmp/other.txt outside"),
])
def test_a_dockerfile_installing_around_the_file_is_refused(tmp_path, run, error):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(f"FROM {TRITON.base}\n"
                          f"COPY {TRITON.requirements} /tmp/triton-image.txt\n"
                          f"RUN {run}\n")
    img = dataclasses.replace(TRITON, dockerfile=str(dockerfile), venvs=())
    with pytest.raises(images.ImageCheckError, match=re.escape(error)):
        images.check_pip_steps(img)


def test_a_virtual_environment_copied_but_never_installed_is_refused(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(f"FROM {TRITON.base}\n"
                          f"COPY {TRITON.requirements} /tmp/triton-image.txt\n"
                          "COPY requirements/model-analyzer.txt /tmp/model-analyzer.txt\n"
                          "RUN pip install -r /tmp/triton-image.txt\n")
    img = dataclasses.replace(TRITON, dockerfile=str(dockerfile))
    with pytest.raises(images.ImageCheckError, match="never pip-installs it"):
        images.check_pip_steps(img)


@pytest.mark.network
def test_model_analyzers_environment_resolves_in_the_triton_image():
    """Model Analyzer's own virtual environment in the Triton image (notebook 09 on the GPU
    node) resolves for the image's Python 3.10 and glibc 2.35, at the pinned release."""
    found = asked(network_check, "resolve_venvs:triton", images.resolve_venvs, TRITON)
    analyzer_env = found["requirements/model-analyzer.txt"]
    assert analyzer_env["triton-model-analyzer"] == "1.46.0"


def test_another_base_image_asks_for_its_facts(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(TRITON.path.read_text().replace(TRITON.base,
                                                          "nvcr.io/nvidia/tritonserver:25.01-py3"))
    img = dataclasses.replace(TRITON, dockerfile=str(dockerfile))
    with pytest.raises(images.ImageCheckError, match="Update IMAGES"):
        images.check_base(img)


def test_a_torch_for_another_cuda_is_refused():
    resolved = {"torch": "2.8.0", "nvidia-cuda-runtime-cu12": "12.8.90",
                "nvidia-cudnn-cu12": "9.10.2.21"}
    with pytest.raises(images.ImageCheckError, match=r"CUDA runtime 12\.8\.90.*CUDA 12\.6"):
        images.check_cuda(TRITON, resolved)
    images.check_cuda(TRITON, {**resolved, "nvidia-cuda-runtime-cu12": "12.6.77"})
    images.check_cuda(JUPYTER, resolved)  # the Jupyter image uses no GPU
