"""`make lab`'s notebook runner: how long a cell may run, and what a cell past its limit gives."""

from __future__ import annotations

import nbformat
import pytest

from tritonlab import lab
from tritonlab.measuring import analyzer


def test_a_full_run_gives_a_cell_time_for_the_whole_model_analyzer_search():
    runtimes = len(analyzer.SearchSettings().runtimes)
    assert runtimes == 2, "the full search's runtimes changed: check the full cell limit"
    whole_search = runtimes * analyzer.search_limit_s(quick=False)
    assert lab.cell_timeout_s(quick=False) > whole_search
    # quick mode keeps a short limit: a stalled cell in the tests fails within minutes
    assert lab.cell_timeout_s(quick=True) <= 900


def test_a_cell_past_its_limit_fails_the_notebook_and_keeps_the_executed_copy(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('first')"),
                                         nbformat.v4.new_code_cell("import time\ntime.sleep(60)")])
    path = tmp_path / "slow.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(lab.NotebookFailed, match=r"slow.ipynb: a cell ran past its limit of 3 s"):
        lab.run_notebook(path, tmp_path / "out", cell_timeout=3)
    done = nbformat.read(tmp_path / "out" / "slow.ipynb", as_version=4)
    assert done.cells[0].outputs[0]["text"] == "first\n"
