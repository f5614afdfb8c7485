"""Run the course's notebooks headless (`make lab`, and the tests): execute, save, report."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

from . import settings
from .common import log


class NotebookFailed(RuntimeError):
    """A notebook cell raised; the executed copy up to that cell is saved for reading."""


def course_notebooks(folder: Path = settings.NOTEBOOKS) -> list[Path]:
    """The numbered notebooks in order (00_... runs only on Chameleon, so it is left out), then
    the appendices (A1_..., A2_...): the course's main line ends before them."""
    numbered = [p for p in sorted(folder.glob("[0-9][0-9]_*.ipynb"))
                if not p.name.startswith("00_")]
    return numbered + sorted(folder.glob("A[0-9]_*.ipynb"))


def cell_timeout_s(quick: bool) -> int:
    """Seconds one cell may run: 15 minutes in quick mode; in a full run, as long as notebook
    09's Model Analyzer search may take (both runtimes, each up to `analyzer.search_limit_s`)
    plus 30 minutes, since that one cell is the longest of the course."""
    from .measuring import analyzer

    if quick:
        return 900
    runtimes = len(analyzer.SearchSettings().runtimes)
    return runtimes * analyzer.search_limit_s(quick=False) + 1800


def run_notebook(path: Path, out_dir: Path, quick: bool = True,
                 cell_timeout: int | None = None) -> Path:
    """Execute one notebook in its own kernel (cwd = notebooks/) and save the executed copy.
    `cell_timeout` in seconds (default `cell_timeout_s(quick)`); a cell that runs longer fails
    the notebook."""
    from tqdm.auto import tqdm

    nb = nbformat.read(path, as_version=4)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / path.name
    # JPY_SESSION_NAME: the notebook a kernel runs, as JupyterLab tells its kernels (a Triton
    # started there names it in its pid file)
    env = dict(os.environ, TRITONLAB_QUICK="1" if quick else "0", TRITONLAB_OUTPUT_DIR=str(out_dir),
               JPY_SESSION_NAME=str(path))
    code_cells = sum(c.cell_type == "code" for c in nb.cells)
    bar = tqdm(total=code_cells, desc=path.stem, unit="cell", leave=True)
    from jupyter_client import AsyncKernelManager
    from jupyter_core.utils import run_sync

    # IPC sockets in a private folder: the kernel talks to this process only, not over TCP.
    # The asynchronous manager matters: with the blocking one, nbclient waits for the kernel's
    # output in a blocking call and the cell time limit never fires.
    sockets = Path(tempfile.mkdtemp(prefix="tritonlab-kernel-"))
    kernel = AsyncKernelManager(kernel_name="python3", transport="ipc",
                                ip=str(sockets / "kernel"))
    limit = cell_timeout or cell_timeout_s(quick)
    client = NotebookClient(nb, km=kernel, timeout=limit,
                            kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}},
                            on_cell_executed=lambda **kw: bar.update(1))
    try:
        client.execute(env=env)
    except CellExecutionError as exc:
        raise NotebookFailed(f"{path.name} failed; executed copy: {out_path}\n{exc}") from None
    except CellTimeoutError as exc:
        raise NotebookFailed(f"{path.name}: a cell ran past its limit of {limit} s (the "
                             f"notebook's kernel was stopped); executed copy: {out_path}\n"
                             f"{exc}") from None
    finally:
        bar.close()
        nbformat.write(nb, out_path)
        if kernel.has_kernel:
            run_sync(kernel.shutdown_kernel)(now=True)
        shutil.rmtree(sockets, ignore_errors=True)
    return out_path


def run_course(notebooks: Sequence[Path] | None = None, out_dir: Path | None = None,
               quick: bool = True) -> list[Path]:
    """Execute the notebooks in order; says where the executed copies and figures are."""
    out_dir = out_dir or settings.output_dir()
    notebooks = [Path(p) for p in (notebooks or course_notebooks())]
    started = time.time()
    done = []
    for path in notebooks:
        began = time.monotonic()
        done.append(run_notebook(Path(path), out_dir, quick=quick))
        log.info(f"{path.name}: ran in {time.monotonic() - began:.0f} s")
    copied = copy_new_results(out_dir / "results", since=started)
    log.info(f"\nExecuted notebooks: {out_dir}\nFigures: {out_dir / 'figures'}")
    if copied:
        log.info(f"Results of this run: {out_dir / 'results'} ({copied} files; all runs are kept "
                 f"in {settings.results_dir()})")
    return done


def copy_new_results(target: Path, since: float) -> int:
    """Copy the result files written since `since` (a time.time()) into `target`."""
    source = settings.results_dir()
    if not source.is_dir():
        return 0
    fresh = [p for p in source.iterdir() if p.suffix in (".csv", ".json")
             and p.stat().st_mtime >= since]
    if fresh:
        target.mkdir(parents=True, exist_ok=True)
    for path in fresh:
        shutil.copy2(path, target / path.name)
    return len(fresh)
