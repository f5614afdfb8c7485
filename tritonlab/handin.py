"""The hand-in (`make handin`, and the last cell of notebook 11): one zip file an instructor reads
without running anything. It holds the executed notebooks, the figures, the results table with
the runs it rests on, the student's answers, and a manifest saying on what machine, with what
software and in which measurement mode (quick or full) it all ran, and what is missing.

How answers are written. Each question is a markdown cell of a notebook containing *Your turn*
(as `*Your turn:*`, `**Your turn**` or a `## Your turn` heading). The student answers in the
notebook, right below the question, in a markdown cell that begins with `**Answer:**`
(`Answer:`, `*Answer:*` and an `## Answer` heading count too): in JupyterLab, select the
question, press B (a new cell below), M (markdown), write, and save. The answer sits next to the
numbers it is read from, works the same on a laptop and on the GPU node's JupyterLab, and needs
no other file. An answer cell belongs to the nearest question above it; several answer cells
under one question are joined. A cell holding only `ANSWER_TEMPLATE` (the marker and its
"write your answer here" hint) is unanswered, so a course may ship empty answer cells.

Where things are read from:
- notebooks: for each course notebook (`lab.course_notebooks`), the copy `make lab` executed
  (`<output>/<name>`, default build/lab/) and the student's own (`notebooks/<name>`, which
  JupyterLab saves with its outputs). The archive holds the newest copy that was executed; a
  notebook executed in neither copy is listed as missing. Answers are read from both copies: for
  each question, the newest file holding an answer wins.
- figures: every PNG in `<output>/figures/` (`measuring.plots.save`).
- results: `measuring.results.table()` over the results folder (data/results/: the newest run
  of each variant), keeping this course run's rows (`this_course_run`: saved since the newest
  classifier baseline, which notebook 02 measures first), as CSV, and each run's JSON file the
  table's rows come from; older runs are named in the manifest as left out.
- measurement mode, Triton version, server mode and the measuring machine: those runs' `meta`
  (`quick`, `server_version`, `mode`, `machine`); the machine making the archive:
  `serving.devices.machine()`.
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import nbformat

from . import settings
from .common import atomic_write, log

#: An empty answer cell a notebook may carry below each question; it counts as unanswered.
ANSWER_TEMPLATE = "**Answer:** *(write your answer here, from this run's numbers)*"
#: Packages whose versions say what software the numbers came from.
PACKAGES = ("nvidia-pytriton", "tritonclient", "torch", "onnxruntime", "transformers")

_PROMPT = re.compile(r"(?:\*{1,2}|_{1,2}|^#{1,6}[ \t]*)your turn\b", re.I | re.M)
_ANSWER = re.compile(r"\A\s*(?:#{1,6}[ \t]*[*_]{0,2}(?:my |your )?answer\b[*_:]*"
                     r"|[*_]{0,2}(?:my |your )?answer[*_]{0,2}[ \t]*:[*_]{0,2})", re.I)
_HINT = re.compile(r"[*_]*\(?\s*write your answer here[^)\n]*\)?[*_]*", re.I)


class HandinError(RuntimeError):
    """The archive could not be written; nothing was left behind."""


@dataclass
class Question:
    """One *Your turn* question and what the student wrote below it."""

    id: str                 # "<notebook number>.<k>": k counts the notebook's questions from 1
    notebook: str           # the notebook's file name
    text: str               # the question, from "Your turn" on
    answer: str = ""        # the answer cells' text, without the marker; "" when unanswered
    source: str = ""        # the notebook file the answer was read from

    @property
    def answered(self) -> bool:
        return bool(self.answer)


@dataclass
class NotebookCopy:
    """What one saved copy of a notebook holds: executed cells, errors, questions."""

    path: Path
    saved: float                        # modification time, seconds since the epoch
    code_cells: int = 0
    executed_cells: int = 0
    errors: int = 0                     # outputs of type "error" (a cell that raised)
    questions: list[tuple[str, str]] = field(default_factory=list)   # (question, answer)
    problem: str = ""                   # why the file could not be read, if it could not

    @property
    def executed(self) -> bool:
        return self.executed_cells > 0


@dataclass
class Handin:
    """The written archive and its manifest (the dict saved inside as manifest.json)."""

    path: Path
    manifest: dict

    def summary(self) -> str:
        """What the archive holds and what is missing, as printed by the CLI and notebook 11."""
        m = self.manifest
        size = self.path.stat().st_size / 2**20
        done = [n for n in m["notebooks"] if n["in_archive"]]
        undone = [n["name"] for n in m["notebooks"] if not n["in_archive"]]
        answers = m["answers"]
        res = m["results"]
        lines = [f"Hand-in written: {self.path} ({size:.1f} MB)",
                 f"  notebooks  {len(done)} of {len(m['notebooks'])} executed"
                 + (f" (never executed: {', '.join(undone)})" if undone else ""),
                 f"  figures    {len(m['figures'])} PNG",
                 (f"  results    {res['rows']} rows from {len(res['runs'])} runs in "
                  f"results/table.csv; measurement mode: {m['measurement_mode']}"
                  + (f"; {len(res['left_out'])} runs of an earlier course run left out"
                     if res["left_out"] else "")
                  if res["runs"] else f"  results    none saved in {res['folder']}"),
                 f"  answers    {answers['answered']} of {answers['questions']} questions "
                 "answered" + (f"; unanswered: {', '.join(answers['unanswered'])}"
                               if answers["unanswered"] else ""),
                 f"  machine    {_machine_line(m['machine'])}",
                 f"  Triton     {', '.join(m['triton_server']) or 'no saved run names it'}"]
        if m["missing"]:
            lines.append("Missing (listed in MANIFEST.md too):")
            lines += [f"  - {item}" for item in m["missing"]]
        lines.append("Inside: MANIFEST.md (read first), ANSWERS.md, notebooks/, figures/, "
                     "results/.")
        return "\n".join(lines)


# --- reading what the student did ---------------------------------------------------------
def read_copy(path: Path) -> NotebookCopy:
    """Read one saved notebook: its executed cells, errors, and (question, answer) pairs.

    A file that is not a readable notebook is returned with `problem` set, never raised.
    """
    copy = NotebookCopy(path=path, saved=path.stat().st_mtime)
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:  # a corrupt file must not stop the hand-in: it is listed
        copy.problem = f"not a readable notebook ({type(exc).__name__}: {exc})"[:300]
        return copy
    code = [c for c in nb.cells if c.cell_type == "code"]
    copy.code_cells = len(code)
    copy.executed_cells = sum(c.get("execution_count") is not None for c in code)
    copy.errors = sum(o.get("output_type") == "error" for c in code for o in c.get("outputs", []))
    copy.questions = answers_in(nb)
    return copy


def answers_in(nb) -> list[tuple[str, str]]:
    """The (question, answer) pairs of a notebook, in order; answer is "" when unanswered.

    Answer cells above the first question are kept under a question saying so."""
    pairs: list[list[str]] = []
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        text = cell.source
        marker = _ANSWER.match(text)
        if marker:
            body = _HINT.sub("", text[marker.end():]).strip()
            if not re.search(r"\w", body):
                body = ""
            if body and not pairs:
                pairs.append(["(answer cell above the notebook's first question)", ""])
            if body:
                pairs[-1][1] = f"{pairs[-1][1]}\n\n{body}".strip()
            continue
        prompt = _PROMPT.search(text)
        if prompt:
            question = text[prompt.start():]
            rest = question.find("\n")
            heading = re.search(r"^#{1,6}\s", question[rest:], re.M) if rest >= 0 else None
            if heading:  # the cell goes on with the next section: not part of the question
                question = question[:rest + heading.start()]
            pairs.append([question.strip(), ""])
    return [(q, a) for q, a in pairs]


def _key(question: str) -> str:
    return " ".join(question.split()).lower()


def merge_answers(name: str, copies: list[NotebookCopy]) -> list[Question]:
    """The questions of one notebook with, for each, the answer of the newest copy holding one.

    The questions are the newest readable copy's, in its order; a question only an older copy
    has (its text changed since) is kept only if it was answered there."""
    readable = sorted((c for c in copies if not c.problem), key=lambda c: c.saved, reverse=True)
    questions: dict[str, Question] = {}
    for rank, copy in enumerate(readable):
        for text, answer in copy.questions:
            if rank and not answer and _key(text) not in questions:
                continue
            q = questions.setdefault(_key(text), Question("", name, text))
            if answer and not q.answer:
                q.answer, q.source = answer, _show(copy.path)
    out = list(questions.values())
    for k, q in enumerate(out, 1):
        q.id = f"{name[:2]}.{k}"
    return out


def this_course_run(table, model: str = "food_classifier", reference: str = "baseline"):
    """The rows of `results.table()` saved since the newest `reference` run of `model` (notebook
    02 measures the baseline first: a course run starts there), and the files of the runs left
    out as older. Without a reference run every row is kept."""
    from .measuring import results

    started = results.course_run_start(table, model, reference)
    if started is None:
        return table, []
    older = table["date"] < started
    return (table[~older].reset_index(drop=True),
            sorted(set(table.loc[older, "file"])))


# --- where it ran -------------------------------------------------------------------------
def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(settings.ROOT), *args], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state() -> dict | None:
    """The checkout's commit and the tracked files changed since it (None outside git)."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return None
    changed = _git("status", "--porcelain", "--untracked-files=no") or ""
    return {"commit": commit.strip(),
            "changed": [line[3:] for line in changed.splitlines() if line.strip()]}


def _versions() -> dict:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _weights() -> dict:
    """Which weights are served: a stand-in's labels and captions mean nothing."""
    from .assets import blip, weights

    found = {}
    for name, read in (("food11", weights.current), ("blip", blip.current)):
        try:
            meta = read() or {}
        except Exception as exc:  # what the weights are is worth a line, not a failed hand-in
            meta = {"source": f"unreadable ({type(exc).__name__})"}
        found[name] = {"source": meta.get("source", "none"), "stand_in": meta.get("stand_in")}
    return found


def _machine_line(machine: dict) -> str:
    gpus = ", ".join(machine.get("gpus") or []) or "no GPU"
    return (f"{machine.get('cores')} cores ({machine.get('cpu')}), "
            f"{machine.get('memory_gib')} GiB, {gpus}")


def _mode(runs: list[dict]) -> tuple[str, dict]:
    """'quick', 'full', 'mixed' or 'unknown', from the runs' `quick` flag; and each one's runs."""
    by_mode: dict[str, list[str]] = {}
    for run in runs:
        quick = run["meta"].get("quick")
        label = "unknown" if quick is None else ("quick" if quick else "full")
        by_mode.setdefault(label, []).append(Path(run["path"]).name)
    if not by_mode:
        return "unknown (no saved run)", by_mode
    return (next(iter(by_mode)) if len(by_mode) == 1 else "mixed"), by_mode


def _show(path: Path) -> str:
    """A path as a reader of the manifest knows it: relative to the course folder if inside."""
    try:
        return str(Path(path).resolve().relative_to(settings.ROOT))
    except ValueError:
        return str(path)


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def handin_dir() -> Path:
    """Where archives go: `handin/` beside the lab output folder (default build/handin/)."""
    return settings.output_dir().parent / "handin"


# --- building it --------------------------------------------------------------------------
def build(out_dir: Path | None = None, notebooks_dir: Path | None = None,
          lab_dir: Path | None = None, results_dir: Path | None = None) -> Handin:
    """Write `handin-<UTC time>.zip` into `out_dir` (default `handin_dir()`) and return it.

    `notebooks_dir` (default notebooks/) names the course notebooks and holds the student's
    copies; `lab_dir` (default the output folder, build/lab/) holds `make lab`'s executed copies
    and `figures/`; `results_dir` (default data/results/) the saved runs. Anything absent (a
    notebook never executed, no figure, no saved run, an unanswered question) is listed under
    "missing" in the manifest, not raised. The zip is written to a temporary file and renamed,
    so a failure leaves no archive, whole or partial.

    Raises HandinError when the archive cannot be written (disk full, folder not writable,
    a file that cannot be read), saying what to do.
    """
    from .lab import course_notebooks
    from .measuring import openloop, results
    from .serving import devices

    notebooks_dir = Path(notebooks_dir or settings.NOTEBOOKS)
    lab_dir = Path(lab_dir or settings.output_dir())
    results_dir = Path(results_dir or settings.results_dir())
    out_dir = Path(out_dir or handin_dir())
    now = datetime.now(timezone.utc)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    top = f"handin-{stamp}"
    files: dict[str, Path | bytes] = {}     # path inside the archive (below `top`) -> content
    missing: list[str] = []

    notebooks, questions = [], []
    for source in course_notebooks(notebooks_dir):
        copies = [read_copy(p) for p in (lab_dir / source.name, source) if p.is_file()]
        for copy in copies:
            if copy.problem:
                missing.append(f"{_show(copy.path)}: {copy.problem}")
        executed = [c for c in copies if c.executed]
        entry = {"name": source.stem, "in_archive": None}
        if executed:
            best = max(executed, key=lambda c: c.saved)
            files[f"notebooks/{source.name}"] = best.path
            entry.update(in_archive=f"notebooks/{source.name}", copy=_show(best.path),
                         saved=_when(best.saved), code_cells=best.code_cells,
                         executed_cells=best.executed_cells, errors=best.errors)
            if best.errors or best.executed_cells < best.code_cells:
                missing.append(f"{source.stem}: ran {best.executed_cells} of {best.code_cells} "
                               f"code cells, {best.errors} raised an error ({_show(best.path)})")
        notebooks.append(entry)
        questions += merge_answers(source.name, copies)

    never = [n["name"] for n in notebooks if not n["in_archive"]]
    if never:
        missing.append(f"never executed: {', '.join(never)} (no copy in {_show(lab_dir)}/ or "
                       f"{_show(notebooks_dir)}/ holds outputs): run `make lab`, or run them in "
                       "JupyterLab and save them")

    figures = sorted(p for p in (lab_dir / "figures").glob("*.png") if p.is_file())
    for path in figures:
        files[f"figures/{path.name}"] = path
    for entry in notebooks:
        if entry["in_archive"] and not any(p.name.startswith(entry["name"][:2] + "_")
                                           for p in figures):
            missing.append(f"{entry['name']}: no figure in {_show(lab_dir / 'figures')}")
    if not figures:
        missing.append(f"figures: none in {_show(lab_dir / 'figures')}")

    table, runs, loaded = None, [], []
    try:
        loaded = results.load_runs(results_dir) if results_dir.is_dir() else []
        table = results.table(runs=loaded) if results_dir.is_dir() else None
    except (KeyError, TypeError, ValueError) as exc:  # a file that is JSON but not a run
        missing.append(f"results: {_show(results_dir)} could not be read as one table "
                       f"({type(exc).__name__}: {exc}); move files that are not runs elsewhere")
    left_out: list[str] = []
    if table is not None and not table.empty:
        table, left_out = this_course_run(table)
        names = set(table["file"])
        runs = [r for r in loaded if Path(r["path"]).name in names]
        files["results/table.csv"] = table.to_csv(index=False).encode()
        for run in runs:
            files[f"results/runs/{Path(run['path']).name}"] = Path(run["path"])
        for path in openloop.saved_since(results.course_run_start(table), results_dir):
            files[f"results/open_loop/{path.name}"] = path  # notebook 07's, this course run
    elif not missing or not missing[-1].startswith("results:"):
        missing.append(f"results: no saved run in {_show(results_dir)} (notebooks 02 to 08 "
                       "save one per measurement)")
    mode, mode_runs = _mode(runs)

    unanswered = [q.id for q in questions if not q.answered]
    if not questions:
        missing.append("answers: the notebooks hold no *Your turn* question")
    elif unanswered:
        missing.append(f"answers: {len(unanswered)} of {len(questions)} questions unanswered "
                       f"({', '.join(unanswered)})")
    files["ANSWERS.md"] = answers_markdown(questions).encode()

    measured_on = []
    for run in runs:
        if run["meta"].get("machine") and run["meta"]["machine"] not in measured_on:
            measured_on.append(run["meta"]["machine"])
    manifest = {
        "archive": f"{top}.zip",
        "created": now.isoformat(timespec="seconds"),
        "git": git_state(),
        "machine": devices.machine(),
        "measured_on": measured_on,
        "versions": _versions(),
        "triton_server": sorted({str(r["meta"]["server_version"]) for r in runs
                                 if r["meta"].get("server_version")}),
        "server_mode": sorted({r["meta"]["mode"] for r in runs if r["meta"].get("mode")}),
        "model_instances": sorted({r["meta"]["device"] for r in runs if r["meta"].get("device")}),
        "runs_with_gpu_metrics": [Path(r["path"]).name for r in runs
                                  if any("gpu" in key for row in r.get("metrics") or []
                                         for key in row)],
        "measurement_mode": mode,
        "measurement_mode_runs": mode_runs,
        "weights": _weights(),
        "notebooks": notebooks,
        "figures": [p.name for p in figures],
        "results": {"table": "results/table.csv" if runs else None,
                    "rows": 0 if table is None else len(table),
                    "runs": [Path(r["path"]).name for r in runs],
                    "left_out": left_out,
                    "folder": _show(results_dir)},
        "answers": {"questions": len(questions), "answered": len(questions) - len(unanswered),
                    "unanswered": unanswered,
                    "items": [q.__dict__ | {"answered": q.answered} for q in questions]},
        "missing": missing,
    }
    sizes = {name: (len(c) if isinstance(c, bytes) else c.stat().st_size)
             for name, c in files.items()}
    manifest["contents"] = [{"path": name, "bytes": size} for name, size in sorted(sizes.items())]
    files["manifest.json"] = json.dumps(manifest, indent=1, default=str).encode()
    files["MANIFEST.md"] = manifest_markdown(manifest).encode()

    path = out_dir / f"{top}.zip"
    k = 1
    while path.exists():
        k += 1
        path = out_dir / f"{top}-{k}.zip"

    def write(f) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name in ("MANIFEST.md", "ANSWERS.md", "manifest.json"):
                zf.writestr(f"{top}/{name}", files[name])
            for name, content in sorted(files.items()):
                if name in ("MANIFEST.md", "ANSWERS.md", "manifest.json"):
                    continue
                if isinstance(content, bytes):
                    zf.writestr(f"{top}/{name}", content)
                else:
                    zf.write(content, f"{top}/{name}")

    try:
        atomic_write(path, write)
    except OSError as exc:
        raise HandinError(f"Could not write the hand-in {path}: {exc}. No archive was left; "
                          "free disk space, or make the folder writable (or pass another "
                          "folder), and run it again.") from exc
    log.debug(f"hand-in written to {path}")
    return Handin(path=path, manifest=manifest)


# --- what the instructor reads first ------------------------------------------------------
def answers_markdown(questions: list[Question]) -> str:
    """ANSWERS.md: every question, notebook by notebook, with its answer or '(unanswered)'."""
    answered = sum(q.answered for q in questions)
    lines = ["# Answers", "",
             f"{answered} of {len(questions)} questions answered. Each answer is the student's "
             "markdown cell below a *Your turn* question, starting with **Answer:**; the file "
             "it was read from follows each answer.", ""]
    notebook = None
    for q in questions:
        if q.notebook != notebook:
            notebook = q.notebook
            lines += [f"## {Path(notebook).stem}", ""]
        lines += [f"### {q.id}", ""]
        lines += [f"> {line}".rstrip() for line in q.text.splitlines()] + [""]
        if q.answered:
            lines += [f"**Answer** (from `{q.source}`):", "", q.answer, ""]
        else:
            lines += ["*(unanswered)*", ""]
    return "\n".join(lines)


def manifest_markdown(m: dict) -> str:
    """MANIFEST.md: where and how it ran, how to read the archive, what is in it and missing."""
    git = m["git"]
    if git:
        commit = f"commit `{git['commit'][:12]}`"
        if git["changed"]:
            commit += f", with changes to: {', '.join(f'`{p}`' for p in git['changed'][:30])}"
            if len(git["changed"]) > 30:
                commit += f" and {len(git['changed']) - 30} more"
    else:
        commit = "not a git checkout"
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    weights = "; ".join(
        f"{name}: " + (f"stand-in with random weights (its {what} mean nothing)"
                       if m["weights"][key]["stand_in"] else m["weights"][key]["source"])
        for key, name, what in (("food11", "Food-11 classifier", "labels"),
                                ("blip", "BLIP captioner", "captions")) if key in m["weights"])
    measured = "; ".join(_machine_line(x) for x in m["measured_on"]) or "no saved run says"
    mode_note = {"quick": "quick (TRITONLAB_QUICK=1: shorter measurement windows and fewer "
                          "points than a full run)",
                 "full": "full (full measurement windows)"}.get(m["measurement_mode"],
                                                                m["measurement_mode"])
    if m["measurement_mode"] == "mixed":
        mode_note += ": " + "; ".join(f"{mode}: {', '.join(names)}"
                                       for mode, names in m["measurement_mode_runs"].items())
    lines = [f"# Hand-in: {m['archive']}", "",
             f"Made {m['created']} from {commit}.", "",
             "## Where and how it ran", "",
             "| | |", "|---|---|",
             f"| measurement mode | {mode_note} |",
             f"| Triton server | {', '.join(m['triton_server']) or 'unknown'} "
             f"({', '.join(m['server_mode']) or 'mode unknown'}) |",
             f"| model instances (as Triton reported their config) | "
             f"{'; '.join(m['model_instances']) or 'unknown'} |",
             f"| runs in which Triton reported GPU metrics | "
             f"{len(m['runs_with_gpu_metrics'])} of {len(m['results']['runs'])} |",
             f"| measured from (the client's machine) | {measured} |",
             f"| archive made on | {_machine_line(m['machine'])}; {m['machine'].get('platform')} |",
             f"| weights (served when the archive was made) | {weights} |",
             f"| software | {versions} |", "",
             "The machines are those of the processes that measured and made the archive. On "
             "the GPU node that is the Jupyter container, which sees no GPU: there the model "
             "instances above say which kind and GPU ids Triton's config gave them, and the runs "
             "with GPU metrics are those in which Triton itself reported GPUs.", "",
             "## How to read it", "",
             "1. `ANSWERS.md`: every *Your turn* question, notebook by notebook, with the "
             "student's answer or *(unanswered)*.",
             "2. `notebooks/`: the executed notebooks with their outputs, as the student saw "
             "them; open them in JupyterLab (nothing needs to run) and read the answers next to "
             "the numbers they cite.",
             "3. `figures/`: every figure as PNG, named after its notebook (`03_...`).",
             "4. `results/table.csv`: every measured level (one row per variant and "
             "concurrency, from the newest run of each variant; its `date` and `file` columns say "
             "which run); "
             "`results/runs/*.json`: each of those runs in full (config, perf_analyzer "
             "commands and raw output, server metrics, date, machine); "
             "`results/open_loop/*.json`: notebook 07's open-loop runs (rows and commands).",
             "5. `manifest.json`: all of this page, for scripts.", ""]
    if m["results"]["left_out"]:
        lines += ["Runs saved before this course run's baseline (an earlier course run) are left "
                  "out of the table: " + ", ".join(f"`{f}`" for f in m["results"]["left_out"])
                  + ".", ""]
    lines += ["## Notebooks", "", "| notebook | state | copy | saved |", "|---|---|---|---|"]
    for n in m["notebooks"]:
        if n["in_archive"]:
            state = f"{n['executed_cells']}/{n['code_cells']} cells run"
            if n["errors"]:
                state += f", {n['errors']} error(s)"
            lines.append(f"| {n['name']} | {state} | `{n['copy']}` | {n['saved']} |")
        else:
            lines.append(f"| {n['name']} | never executed | | |")
    lines += ["", "## Missing", ""]
    lines += [f"- {item}" for item in m["missing"]] or ["Nothing."]
    lines += ["", "## Contents", "", "| file | bytes |", "|---|---|"]
    lines += [f"| {c['path']} | {c['bytes']} |" for c in m["contents"]]
    lines += ["| manifest.json, MANIFEST.md | (this page) |", ""]
    return "\n".join(lines)
