"""What every layer of the package uses: the `tritonlab` logger, atomic file writes, and waiting
until a condition holds.

The logger's handler prints each message as a plain line on the current standard output, so a
notebook cell shows it where a `print` would (and pytest captures it the same way). Code that
wants silence wraps the call in `quiet()`.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TypeVar

import tenacity

log = logging.getLogger("tritonlab")

T = TypeVar("T")


class PrintHandler(logging.Handler):
    """Writes each record as one line on whatever `sys.stdout` is at that moment (a notebook
    cell's output, a terminal, pytest's capture)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stdout, flush=True)
        except Exception:  # never let a message break the caller
            self.handleError(record)


if not any(isinstance(h, PrintHandler) for h in log.handlers):
    _handler = PrintHandler()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)
    log.propagate = False


@contextmanager
def quiet(level: int = logging.WARNING) -> Iterator[None]:
    """Silence the package's messages below `level` for the duration of a `with` block."""
    before = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(before)


def atomic_write(path: Path | str, data: bytes | str | Callable[[BinaryIO], object],
                 mode: int | None = None) -> Path:
    """Write `data` to `path` so that readers see the old content or the new, never a part:
    a temporary file in the same folder, then one rename. `data` is bytes, text, or a function
    that writes into the binary file it is given (a download, `torch.save`). `mode` sets the
    file's permissions (default 0o644: readable by a container's user too)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o644 if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def poll_until(check: Callable[[], T], timeout: float, interval: float = 0.25,
               what: str = "the condition") -> T:
    """Call `check` every `interval` seconds until it returns something true, and return that.

    An exception raised by `check` ends the wait at once (it says what went wrong); after
    `timeout` seconds without success, TimeoutError names `what` was awaited.
    """
    retrying = tenacity.Retrying(stop=tenacity.stop_after_delay(timeout),
                                 wait=tenacity.wait_fixed(interval),
                                 retry=tenacity.retry_if_result(lambda result: not result))
    try:
        return retrying(check)
    except tenacity.RetryError:
        raise TimeoutError(f"{what} did not happen within {timeout:.0f} s") from None
