"""The hand-in: one zip of executed notebooks, figures, results and answers, with a manifest.

Built from made-up course folders in a temporary directory (real notebooks, PNGs and saved runs
written with the course's own functions); what is missing is listed, never fatal, and a write
that fails leaves nothing behind.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
from PIL import Image

from tritonlab import cli, handin
from tritonlab.measuring import results

QUESTION_1 = "*Your turn:* how much did batching help at concurrency 8?"
QUESTION_2 = "## Your turn\n\n1. Predict, then run with `-b 8`."


def notebook(path: Path, cells: list, executed: bool = False, error: bool = False) -> Path:
    """Write a notebook; `executed` gives its code cells counts and outputs as nbclient does."""
    nb = new_notebook(cells=cells)
    for k, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        if executed:
            cell.execution_count = k + 1
            cell.outputs = [new_output("stream", name="stdout", text="42 infer/s\n")]
    if error:
        last = [c for c in nb.cells if c.cell_type == "code"][-1]
        last.outputs = [new_output("error", ename="RuntimeError", evalue="boom",
                                   traceback=["boom"])]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def course_cells(answer: str | None = None) -> list:
    cells = [new_markdown_cell("# 03 · batching"), new_code_cell("print(42)"),
             new_markdown_cell(f"Some text.\n\n{QUESTION_1}\n\n## 5. Next section"),
             new_markdown_cell(handin.ANSWER_TEMPLATE), new_code_cell("print(1)"),
             new_markdown_cell(QUESTION_2)]
    if answer:
        cells.insert(4, new_markdown_cell(f"**Answer:** {answer}"))
    return cells


def save_run(folder: Path, variant: str, date: str, quick: bool = True) -> Path:
    """A saved run as perf.run writes it (results.to_json of a PerfRun)."""
    df = pd.DataFrame({"concurrency": [1, 8], results.THROUGHPUT: [40.0, 70.0],
                       results.REQUESTS: [120, 210]})
    meta = {"variant": variant, "model": "food_classifier", "mode": "embedded",
            "device": "CPU x1", "date": date, "quick": quick, "measurement_ms": 1500,
            "server_version": "2.51.0",
            "machine": {"cpu": "Test CPU", "cores": 2, "memory_gib": 4.0, "gpus": [],
                        "platform": "Linux"}}
    run = results.PerfRun(df=df, meta=meta, raw={1: "raw"}, metrics=pd.DataFrame())
    stamp = date.replace(":", "").replace("-", "").replace("+0000", "Z")
    path = folder / f"{stamp}_{variant}.json"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(results.to_json(run))
    return path


@pytest.fixture
def course(tmp_path) -> dict:
    """A course folder: 03 answered in the student's copy and executed by `make lab`, 04 never
    run, 00 (not a course notebook), two figures, three runs (two of the same variant)."""
    nbs, lab, res = tmp_path / "notebooks", tmp_path / "build" / "lab", tmp_path / "results"
    notebook(nbs / "00_gpu_node.ipynb", [new_code_cell("print(0)")])
    student = notebook(nbs / "03_dynamic_batching.ipynb", course_cells("1.8x, queue fell."))
    executed = notebook(lab / "03_dynamic_batching.ipynb", course_cells(), executed=True)
    os.utime(executed, (1_000_000_000, 1_000_000_000))   # make lab ran before the answer
    notebook(nbs / "04_scaling.ipynb", [new_markdown_cell(QUESTION_1.replace("batching", "x"))])
    (lab / "figures").mkdir(parents=True)
    for name in ("03_throughput", "03_latency"):
        Image.new("RGB", (40, 30), "white").save(lab / "figures" / f"{name}.png")
    old = save_run(res, "baseline", "2026-11-29T10:00:00+00:00")
    new = save_run(res, "baseline", "2026-11-29T11:00:00+00:00")
    other = save_run(res, "dynamic-batching", "2026-11-29T11:05:00+00:00")
    (res / "open_loop").mkdir()
    for stamp in ("20261129T103000Z", "20261129T111000Z"):  # before and after the baseline
        (res / "open_loop" / f"{stamp}_sweep_fastest.json").write_text("{}")
    return {"notebooks": nbs, "lab": lab, "results": res, "out": tmp_path / "handin",
            "student": student, "executed": executed, "runs": (old, new, other)}


def build(course: dict) -> handin.Handin:
    return handin.build(out_dir=course["out"], notebooks_dir=course["notebooks"],
                        lab_dir=course["lab"], results_dir=course["results"])


def test_archive_holds_notebooks_figures_results_answers_and_a_manifest(course):
    bundle = build(course)
    assert bundle.path.parent == course["out"] and bundle.path.name.startswith("handin-")
    top = bundle.path.stem
    with zipfile.ZipFile(bundle.path) as zf:
        names = {n.removeprefix(f"{top}/") for n in zf.namelist()}
        manifest = json.loads(zf.read(f"{top}/manifest.json"))
        answers_md = zf.read(f"{top}/ANSWERS.md").decode()
        manifest_md = zf.read(f"{top}/MANIFEST.md").decode()
        executed = nbformat.reads(zf.read(f"{top}/notebooks/03_dynamic_batching.ipynb").decode(),
                                  as_version=4)
        table = zf.read(f"{top}/results/table.csv").decode()
    old, new, other = course["runs"]
    assert names == {"MANIFEST.md", "ANSWERS.md", "manifest.json",
                     "notebooks/03_dynamic_batching.ipynb",
                     "figures/03_latency.png", "figures/03_throughput.png",
                     "results/table.csv", f"results/runs/{new.name}", f"results/runs/{other.name}",
                     "results/open_loop/20261129T111000Z_sweep_fastest.json"}
    # the executed copy, not the student's unexecuted one
    assert executed.cells[1].outputs[0]["text"] == "42 infer/s\n"
    # the table is the newest run of each variant: 2 variants x 2 levels
    assert len(pd.read_csv(io.StringIO(table))) == manifest["results"]["rows"] == 4
    assert old.name not in table and new.name in table
    assert [n["name"] for n in manifest["notebooks"]] == ["03_dynamic_batching", "04_scaling"]
    assert manifest["notebooks"][0]["executed_cells"] == 2
    assert manifest["notebooks"][1]["in_archive"] is None
    assert any(m.startswith("never executed: 04_scaling (") for m in manifest["missing"])
    assert manifest["measurement_mode"] == "quick"
    assert manifest["triton_server"] == ["2.51.0"] and manifest["server_mode"] == ["embedded"]
    assert manifest["model_instances"] == ["CPU x1"] and manifest["runs_with_gpu_metrics"] == []
    assert manifest["machine"]["cores"] == os.cpu_count()
    assert manifest["measured_on"][0]["cpu"] == "Test CPU"
    assert manifest["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert manifest["versions"]["tritonclient"] == "2.51.0"
    assert {c["path"] for c in manifest["contents"]} == names - {"manifest.json", "MANIFEST.md"}
    # answers: the student's copy is newer than make lab's, so its answer counts
    answers = {q["id"]: q for q in manifest["answers"]["items"]}
    assert answers["03.1"]["answer"] == "1.8x, queue fell."
    assert answers["03.1"]["text"] == QUESTION_1  # the next section's heading is left out
    assert answers["03.1"]["source"].endswith("notebooks/03_dynamic_batching.ipynb")
    assert manifest["answers"]["unanswered"] == ["03.2", "04.1"]
    assert "1.8x, queue fell." in answers_md and answers_md.count("*(unanswered)*") == 2
    assert "| measurement mode | quick" in manifest_md
    assert "| 04_scaling | never executed |" in manifest_md
    summary = bundle.summary()
    assert str(bundle.path) in summary and "1 of 3 questions answered" in summary
    assert "never executed: 04_scaling" in summary


def test_an_answer_in_either_copy_counts_and_the_newest_wins(course):
    notebook(course["student"], course_cells())   # the student's copy: no answer (newest)
    notebook(course["executed"], course_cells("from make lab's copy"), executed=True)
    os.utime(course["executed"], (1_000_000_000, 1_000_000_000))
    first = {q["id"]: q for q in build(course).manifest["answers"]["items"]}
    assert first["03.1"]["answer"] == "from make lab's copy"
    notebook(course["student"], course_cells("newer"))
    second = {q["id"]: q for q in build(course).manifest["answers"]["items"]}
    assert second["03.1"]["answer"] == "newer"


def test_a_changed_question_is_kept_only_if_the_older_copy_answered_it(tmp_path):
    old = notebook(tmp_path / "a" / "05_onnx.ipynb",
                   [new_markdown_cell("*Your turn:* old wording"),
                    new_markdown_cell("*Your turn:* old, answered"),
                    new_markdown_cell("Answer: yes")])
    os.utime(old, (1_000_000_000, 1_000_000_000))
    new = notebook(tmp_path / "b" / "05_onnx.ipynb", [new_markdown_cell("*Your turn:* new")])
    merged = handin.merge_answers("05_onnx.ipynb", [handin.read_copy(old), handin.read_copy(new)])
    assert [(q.id, q.text, q.answer) for q in merged] == [
        ("05.1", "*Your turn:* new", ""), ("05.2", "*Your turn:* old, answered", "yes")]


@pytest.mark.parametrize("cell,answer", [
    ("**Answer:** 2x faster", "2x faster"),
    ("**Answer**: 2x faster", "2x faster"),
    ("Answer: 2x faster", "2x faster"),
    ("*answer:* 2x faster", "2x faster"),
    ("## My answer\n\n2x faster", "2x faster"),
    (handin.ANSWER_TEMPLATE, ""),
    ("**Answer:**", ""),
    (handin.ANSWER_TEMPLATE + "\n\n2x faster", "2x faster"),
])
def test_answer_cells_are_recognised_and_an_empty_template_is_unanswered(cell, answer):
    nb = new_notebook(cells=[new_markdown_cell("**Your turn**: why?"), new_markdown_cell(cell)])
    assert handin.answers_in(nb) == [("**Your turn**: why?", answer)]


def test_text_that_only_mentions_an_answer_is_not_one():
    nb = new_notebook(cells=[new_markdown_cell("Answer the question below."),
                             new_markdown_cell("*Your turn:* why?"),
                             new_markdown_cell("Answer the question from the table.")])
    assert handin.answers_in(nb) == [("*Your turn:* why?", "")]


def test_an_answer_above_every_question_is_kept():
    nb = new_notebook(cells=[new_markdown_cell("Answer: early"),
                             new_markdown_cell("*Your turn:* why?")])
    assert handin.answers_in(nb) == [("(answer cell above the notebook's first question)",
                                      "early"), ("*Your turn:* why?", "")]


def test_with_nothing_done_the_archive_lists_what_is_missing(tmp_path):
    nbs = tmp_path / "notebooks"
    notebook(nbs / "01_first.ipynb", [new_code_cell("print(1)")])
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "01_first.ipynb").write_text("{ not json")
    bundle = handin.build(out_dir=tmp_path / "out", notebooks_dir=nbs,
                          lab_dir=tmp_path / "lab", results_dir=tmp_path / "no-results")
    missing = bundle.manifest["missing"]
    assert any("lab/01_first.ipynb: not a readable notebook" in m for m in missing)
    assert any(m.startswith("never executed: 01_first (") for m in missing)
    assert any(m.startswith("figures: none") for m in missing)
    assert any(m.startswith("results: no saved run") for m in missing)
    assert any("hold no *Your turn* question" in m for m in missing)
    assert bundle.manifest["measurement_mode"] == "unknown (no saved run)"
    with zipfile.ZipFile(bundle.path) as zf:
        assert sorted(n.split("/", 1)[1] for n in zf.namelist()) == \
            ["ANSWERS.md", "MANIFEST.md", "manifest.json"]


def test_a_notebook_that_stopped_at_an_error_is_handed_in_and_flagged(course):
    notebook(course["executed"], course_cells(), executed=True, error=True)
    bundle = build(course)
    entry = bundle.manifest["notebooks"][0]
    assert entry["in_archive"] and entry["errors"] == 1
    assert any("03_dynamic_batching: ran 2 of 2 code cells, 1 raised an error" in m
               for m in bundle.manifest["missing"])


def test_a_failed_write_leaves_no_archive_whole_or_partial(course):
    """The archive outgrows the file size the process may write (as on a full disk)."""
    with open(course["lab"] / "figures" / "03_big.png", "wb") as f:
        f.write(os.urandom(600_000))  # random bytes: deflate cannot shrink them
    code = textwrap.dedent(f"""
        import resource, signal, sys
        from pathlib import Path
        from tritonlab import handin
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit raises instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        try:
            handin.build(out_dir=Path({str(course['out'])!r}),
                         notebooks_dir=Path({str(course['notebooks'])!r}),
                         lab_dir=Path({str(course['lab'])!r}),
                         results_dir=Path({str(course['results'])!r}))
        except handin.HandinError as exc:
            print(exc)
            sys.exit(3)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "File too large" in out.stdout and "No archive was left" in out.stdout
    assert list(course["out"].iterdir()) == []   # no archive, no temporary file


def test_the_command_prints_where_the_archive_is_and_what_it_holds(course, monkeypatch, capsys):
    monkeypatch.setenv("TRITONLAB_OUTPUT_DIR", str(course["lab"]))
    monkeypatch.setenv("TRITONLAB_RESULTS_DIR", str(course["results"]))
    assert cli.main(["handin", "--out", str(course["out"])]) == 0
    printed = capsys.readouterr().out
    [archive] = course["out"].glob("handin-*.zip")
    assert f"Hand-in written: {archive}" in printed
    assert "results    4 rows from 2 runs" in printed and "measurement mode: quick" in printed
    assert handin.handin_dir() == course["lab"].parent / "handin"


def test_runs_of_both_modes_are_called_mixed_and_named(course):
    full = save_run(course["results"], "onnx", "2026-11-29T12:00:00+00:00", quick=False)
    bundle = build(course)
    assert bundle.manifest["measurement_mode"] == "mixed"
    assert bundle.manifest["measurement_mode_runs"]["full"] == [full.name]
    with zipfile.ZipFile(bundle.path) as zf:
        page = zf.read(f"{bundle.path.stem}/MANIFEST.md").decode()
    assert "| measurement mode | mixed: quick: " in page and f"full: {full.name}" in page


def test_runs_older_than_this_course_runs_baseline_are_left_out_and_named(course):
    stale = save_run(course["results"], "2-instances", "2026-11-29T10:30:00+00:00")
    bundle = build(course)
    assert bundle.manifest["results"]["left_out"] == [stale.name]
    assert stale.name not in bundle.manifest["results"]["runs"]
    with zipfile.ZipFile(bundle.path) as zf:
        assert stale.name not in zf.read(f"{bundle.path.stem}/results/table.csv").decode()
        assert f"`{stale.name}`" in zf.read(f"{bundle.path.stem}/MANIFEST.md").decode()
