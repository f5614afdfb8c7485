"""The small pieces every layer uses: where Triton is, atomic writes, waiting."""

from __future__ import annotations

import stat

import pytest

from tritonlab.common import atomic_write, poll_until
from tritonlab.settings import TritonAddress


@pytest.mark.parametrize("text,expected", [
    ("http://127.0.0.1:8000", ("127.0.0.1", 8000, 8001, 8002)),
    ("triton:9000", ("triton", 9000, 9001, 9002)),
    ("http://10.0.0.5:8000?grpc=9001&metrics=9100", ("10.0.0.5", 8000, 9001, 9100)),
])
def test_triton_url_names_the_host_and_its_three_ports(text, expected):
    address = TritonAddress.parse(text)
    assert (address.host, address.http, address.grpc, address.metrics) == expected
    assert TritonAddress.parse(address.url) == address  # written back, read again


@pytest.mark.parametrize("text,problem", [
    ("https://triton:8000", "write http://HOST:PORT"),
    ("http://triton:8000/v2", "write http://HOST:PORT"),
    ("http://triton:8000?grpc=x", "ports must be numbers"),
    ("http://triton:8000?grcp=8001", "write http://HOST:PORT"),
])
def test_a_wrong_triton_url_says_what_to_write(text, problem):
    with pytest.raises(ValueError, match=problem):
        TritonAddress.parse(text)


def test_atomic_write_leaves_the_new_content_and_no_temporary_file(tmp_path):
    path = tmp_path / "sub" / "key"
    atomic_write(path, "old")
    atomic_write(path, b"new", mode=0o600)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    atomic_write(path, lambda f: f.write(b"streamed"))
    assert path.read_bytes() == b"streamed" and [p.name for p in path.parent.iterdir()] == ["key"]
    with pytest.raises(RuntimeError):
        atomic_write(path, lambda f: (f.write(b"half"), (_ for _ in ()).throw(RuntimeError())))
    assert path.read_bytes() == b"streamed" and len(list(path.parent.iterdir())) == 1


def test_poll_until_returns_the_first_true_answer_and_says_what_it_waited_for():
    answers = iter([None, [], "ready"])
    assert poll_until(lambda: next(answers), timeout=5, interval=0.01) == "ready"
    with pytest.raises(TimeoutError, match="the moon did not happen within 0 s"):
        poll_until(lambda: False, timeout=0.2, interval=0.05, what="the moon")

    def broken():
        raise ValueError("the server exited")

    with pytest.raises(ValueError, match="the server exited"):  # at once, not after the timeout
        poll_until(broken, timeout=60, interval=0.01)
