"""Promises the repository makes: clean notebooks, lint, README commands, ignored outputs."""

from __future__ import annotations

import json
import subprocess
import sys

from tritonlab import settings


def test_notebooks_are_committed_without_outputs():
    for path in settings.NOTEBOOKS.glob("*.ipynb"):
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell["outputs"] and cell["execution_count"] is None, path.name


def test_each_notebook_is_titled_with_its_own_number_and_listed_in_the_readme():
    readme = (settings.ROOT / "README.md").read_text()
    for path in settings.NOTEBOOKS.glob("*.ipynb"):
        title = "".join(json.loads(path.read_text())["cells"][0]["source"]).splitlines()[0]
        number = path.stem.split("_")[0]
        assert title.startswith(f"# {number} · "), (path.name, title)
        assert f"| `{path.stem}` |" in readme, f"{path.stem} has no row in the README's table"


def test_ruff_is_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise",
                           "tritonlab", "tests", "notebooks", "model_repository"],
                          cwd=settings.ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_readme_shows_the_commands():
    readme = (settings.ROOT / "README.md").read_text()
    for command in ("make lab", "make test", "make serve", "make stop", "make jupyter"):
        assert command in readme


def test_makefile_targets_exist():
    makefile = (settings.ROOT / "Makefile").read_text()
    for target in ("lab:", "test:", "serve:", "stop:", "jupyter:", "system-deps:"):
        assert f"\n{target}" in makefile


def test_sample_data_has_its_origin_noted():
    assert sorted(settings.SAMPLES.glob("*.jpg"))
    assert "draw_samples" in (settings.DATA / "README.md").read_text()
