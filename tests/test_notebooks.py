"""Every course notebook, executed end to end in quick mode on its own embedded Triton.

The notebooks run in order against one private copy of the model repository and one results
folder, as a student runs them: later notebooks read the results earlier ones saved.
"""

from __future__ import annotations

import nbformat
import pytest

from tritonlab import lab
from tritonlab.serving import configs
from tritonlab.settings import TritonAddress

from .conftest import make_repository, tritonservers_in

pytestmark = pytest.mark.notebook


@pytest.fixture(scope="module")
def course(tmp_path_factory, weights_ready):
    root = tmp_path_factory.mktemp("course")
    return {"repository": make_repository(root / "model_repository"),
            "results": root / "results", "out": root / "out"}


@pytest.mark.parametrize("path", lab.course_notebooks(), ids=lambda p: p.stem)
def test_notebook_runs(path, course, tmp_path, monkeypatch):
    state = tmp_path / "state"
    for key, value in {"TRITON_URL": TritonAddress.free().url, "TRITONLAB_STATE_DIR": state,
                       "TRITONLAB_MODEL_REPOSITORY": course["repository"],
                       "TRITONLAB_RESULTS_DIR": course["results"],
                       "FOOD11_WEIGHTS": "stand-in"}.items():
        monkeypatch.setenv(key, str(value))
    try:
        out = lab.run_notebook(path, course["out"], quick=True)
    except lab.NotebookFailed:
        # a failed notebook must not leave its variant config to the ones after it
        configs.write_course_configs(course["repository"])
        raise
    nb = nbformat.read(out, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "a cell was not executed"
    printed = [o.get("text", "") for c in code for o in c.outputs if o.output_type == "stream"]
    assert not [t for t in printed if "Traceback (most recent call last)" in t], \
        "a cell printed a traceback (an error caught and printed is still an error)"
    assert list((course["out"] / "figures").glob(f"{path.stem[:2]}_*.png")), "no figure saved"
    assert not tritonservers_in(state), "the notebook left Triton running"
    baseline = (course["repository"] / "food_classifier" / "config.pbtxt").read_text()
    assert "kind: KIND_CPU" in baseline and "dynamic_batching" not in baseline, \
        "the notebook did not put the baseline config back"
