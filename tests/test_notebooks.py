"""Every course notebook, executed end to end in quick mode on its own embedded Triton."""

from __future__ import annotations

import nbformat
import pytest

from tritonlab import lab

from .conftest import free_ports, tritonservers_in

pytestmark = pytest.mark.notebook


@pytest.mark.parametrize("path", lab.course_notebooks(), ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch, weights_ready):
    http, grpc, metrics = free_ports()
    state = tmp_path / "state"
    for key, value in {"TRITONLAB_HTTP_PORT": http, "TRITONLAB_GRPC_PORT": grpc,
                       "TRITONLAB_METRICS_PORT": metrics, "TRITONLAB_STATE_DIR": state,
                       "FOOD11_WEIGHTS": "stand-in"}.items():
        monkeypatch.setenv(key, str(value))
    out = lab.run_notebook(path, tmp_path / "out", quick=True)
    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    assert list((tmp_path / "out" / "figures").glob(f"{path.stem[:2]}_*.png"))
    assert not tritonservers_in(state), "the notebook left Triton running"
