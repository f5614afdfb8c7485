"""Triton's processes on this machine: its model processes, their memory and CPU time (psutil).

The Python backend runs each model instance in its own process (the backend stub), a child of
`tritonserver` whose command line names the instance's `model.py`. Only a server started here
(the embedded one) has a process id to ask: Docker mode has none of these figures.
"""

from __future__ import annotations

import queue
import time

import psutil

from ..common import poll_until


def tree(pid: int) -> list[psutil.Process]:
    """Triton's process followed by all its children (the model processes)."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def total(processes, read) -> float:
    """`read(process)` summed over `processes`, skipping any that ended meanwhile."""
    result = 0.0
    for p in processes:
        try:
            result += read(p)
        except psutil.Error:
            pass
    return result


def cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:  # ended meanwhile
        return ""


def rss(pid: int) -> int:
    """Resident memory of Triton and all its model processes, in bytes."""
    return int(total(tree(pid), lambda p: p.memory_info().rss))


def model_processes(pid: int, model: str, instances: int,
                    timeout: float = 60.0) -> list[psutil.Process]:
    """`model`'s processes, once exactly `instances` of them are running (after a reload, the
    old ones may still be shutting down, and the new ones initialising)."""
    marker = f"/{model}/1/model.py"

    def stubs() -> list[psutil.Process]:
        return [p for p in tree(pid)[1:] if marker in cmdline(p)]

    def settled() -> list[psutil.Process] | None:
        found = stubs()
        return found if len(found) == instances else None

    try:
        found = poll_until(settled, timeout, 0.5, f"{instances} processes of {model}")
    except TimeoutError:
        found = stubs()  # counted as they are; the figure says how many it rests on
    time.sleep(1.0)  # let the new processes finish initialising
    return found


def model_rss(pid: int, model: str, instances: int) -> int:
    """Resident memory of `model`'s `instances` processes, in bytes."""
    return int(total(model_processes(pid, model, instances), lambda p: p.memory_info().rss))


def cpu_seconds(pid: int) -> dict:
    """CPU seconds used so far by Triton's own process, its model processes, and this
    process's finished children (the perf_analyzer runs)."""
    import resource

    root, *stubs = tree(pid)
    cpu = lambda p: sum(p.cpu_times()[:2])  # noqa: E731  user + system
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"model processes": total(stubs, cpu), "tritonserver": total([root], cpu),
            "perf_analyzer": children.ru_utime + children.ru_stime}


def answer(procs: list, out, timeout: float = 1800.0):
    """The next answer the child processes `procs` put on the queue `out` (each puts one);
    RuntimeError at once when the queue is empty and none of them is running any more (their
    error is on stderr), or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return out.get(timeout=1.0)
        except queue.Empty:
            if not any(p.is_alive() for p in procs):
                codes = ", ".join(str(p.exitcode) for p in procs)
                raise RuntimeError(f"the in-process worker ended (exit code {codes}) "
                                   "without a result: its error is printed above") from None
    raise RuntimeError(f"the in-process worker gave no result within {timeout:.0f} s")
