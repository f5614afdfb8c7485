"""What a measurement is and where it is kept: the course's column names, `PerfRun`, and the
saved runs (one JSON file per run under data/results/, with a CSV of its table), read back as
one table."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .. import settings
from ..common import atomic_write, log

#: perf_analyzer's CSV header -> the column name the course uses.
COLUMNS = {
    "Concurrency": "concurrency",
    "Inferences/Second": "throughput (infer/s)",
    "Client Send": "client send (us)",
    "Network+Server Send/Recv": "network + server send/recv (us)",
    "Server Queue": "server queue (us)",
    "Server Compute Input": "server compute input (us)",
    "Server Compute Infer": "server compute infer (us)",
    "Server Compute Output": "server compute output (us)",
    "Client Recv": "client recv (us)",
    "p50 latency": "p50 latency (us)",
    "p90 latency": "p90 latency (us)",
    "p95 latency": "p95 latency (us)",
    "p99 latency": "p99 latency (us)",
    "Avg latency": "avg latency (us)",
    "Avg GPU Utilization": "gpu utilization",
    "Avg GPU Power Usage": "gpu power (W)",
    "Max GPU Memory Usage": "gpu memory (bytes)",
    "Total GPU Memory": "gpu memory total (bytes)",
}
THROUGHPUT = "throughput (infer/s)"
P50, P95, P99 = "p50 latency (us)", "p95 latency (us)", "p99 latency (us)"
#: The requests a row's figures rest on (perf_analyzer's count over the measured windows).
REQUESTS = "request count"
#: The server-side part of a request's latency, in the order it happens.
BREAKDOWN = ["server queue (us)", "server compute input (us)", "server compute infer (us)",
             "server compute output (us)"]
CLIENT_SIDE = ["client send (us)", "network + server send/recv (us)", "client recv (us)"]


#: Columns of `PerfRun.phases`: what ran when, in seconds on the clock of the metrics' 'time (s)'.
PHASE_COLUMNS = ["concurrency", "phase", "attempt", "start (s)", "end (s)"]


@dataclass
class PerfRun:
    """One measured variant: the tidy table, server metrics sampled meanwhile, and provenance.

    `phases`: one row per probe and per perf_analyzer measurement of each level (columns
    `PHASE_COLUMNS`; phase 'probe' or 'measurement', attempt 1, 2, ... when a level was measured
    again), timed on the clock of `metrics['time (s)']`. `batch_counts`: {concurrency level:
    {batch size: executions}} that Triton's model statistics counted while each level ran, its
    probe included. Both are empty for runs saved before they were recorded, and
    `batch_counts` also when the model's statistics could not be read.
    """

    df: pd.DataFrame
    meta: dict
    raw: dict[int, str]
    metrics: pd.DataFrame
    steps: pd.DataFrame = field(default_factory=pd.DataFrame)  # an ensemble's composing models
    path: Path | None = None
    phases: pd.DataFrame = field(default_factory=pd.DataFrame)
    batch_counts: dict[int, dict[int, int]] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"PerfRun({self.meta['variant']!r}, {len(self.df)} levels, saved to {self.path})"


def to_json(run: PerfRun) -> str:
    return json.dumps({"meta": run.meta, "rows": run.df.to_dict(orient="records"),
                       "steps": run.steps.to_dict(orient="records"),
                       "metrics": run.metrics.to_dict(orient="records"),
                       "phases": run.phases.to_dict(orient="records"),
                       "batch_counts": {str(level): {str(size): n for size, n in sizes.items()}
                                        for level, sizes in run.batch_counts.items()},
                       "raw": {str(k): v for k, v in run.raw.items()}}, indent=1, default=str)


def read_run(path: Path | str) -> PerfRun:
    """A saved run read back as the PerfRun `perf.run` returned (JSON written by `save_run`);
    runs saved before phases and per-level batch counts were recorded get them empty. Raises
    OSError or ValueError when the file cannot be read as a saved run."""
    path = Path(path)
    data = json.loads(path.read_text())
    phases = pd.DataFrame(data.get("phases") or [])
    metrics = pd.DataFrame(data.get("metrics") or [])
    metrics.attrs["phases"] = phases.to_dict(orient="records")
    return PerfRun(df=pd.DataFrame(data["rows"]), meta=data["meta"],
                   raw={int(k): v for k, v in (data.get("raw") or {}).items()},
                   metrics=metrics, steps=pd.DataFrame(data.get("steps") or []), path=path,
                   phases=phases,
                   batch_counts={int(level): {int(size): int(n) for size, n in sizes.items()}
                                 for level, sizes in (data.get("batch_counts") or {}).items()})


def save_run(run: PerfRun) -> Path:
    """Write a PerfRun as `<results>/<date>_<variant>.json` and `.csv` (the tidy table, for
    spreadsheets and pandas alike), each atomically (never half-written)."""
    folder = settings.results_dir()
    if run.meta.get("variant") == "baseline":
        _say_a_new_course_run_begins(run.meta.get("model", "food_classifier"), folder)
    stamp = run.meta["date"].replace(":", "").replace("-", "").replace("+0000", "Z")
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", run.meta["variant"]).strip("-").lower()
    path = atomic_write(folder / f"{stamp}_{slug}.json", to_json(run))
    atomic_write(path.with_suffix(".csv"), run.df.to_csv(index=False))
    return path


def _say_a_new_course_run_begins(model: str, folder: Path) -> None:
    """A new baseline starts a new course run (`course_run`): say which runs of the last one
    notebook 06 will leave out from now on."""
    try:
        last = course_run(table(folder), model=model)
    except ValueError:  # no course run yet
        return
    others = sorted(v for v in set(last["variant"]) if not v.startswith("baseline"))
    if others:
        log.info(f"This baseline starts a new course run: notebook 06 compares only the runs "
                 f"saved from now on. The last course run's {', '.join(others)} stay in "
                 f"{folder} but are left out; run their notebooks again to compare them with "
                 "this baseline.")


def load_runs(folder: Path | None = None) -> list[dict]:
    """Every saved run, oldest first; files that cannot be read are skipped with a note."""
    folder = folder or settings.results_dir()
    runs = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            data["path"] = str(path)
            runs.append(data)
        except (OSError, ValueError) as exc:
            log.warning(f"skipped {path.name}: {exc}")
    _warn_of_future(runs)
    return runs


def _warn_of_future(runs: list[dict], slack_s: float = 300.0) -> None:
    """Say so when runs are dated after this machine's clock: they would win every 'newest
    run' choice (notebook 06, `latest`, the course run) without a word."""
    now = pd.Timestamp.now(tz="UTC")
    future = []
    for data in runs:
        try:
            date = pd.Timestamp(data["meta"]["date"])
        except (KeyError, TypeError, ValueError):
            continue
        if date.tzinfo is None:
            date = date.tz_localize("UTC")
        if (date - now).total_seconds() > slack_s:
            future.append(Path(data["path"]).name)
    if future:
        log.warning(f"{len(future)} saved run(s) are dated after this machine's clock "
                    f"({now:%Y-%m-%d %H:%M} UTC): {', '.join(future[:5])}"
                    + (" ..." if len(future) > 5 else "") + ". They count as the newest runs "
                    "wherever the newest is chosen: check the clock, or move them out of "
                    f"{settings.results_dir()}.")


#: Which notebook measures the runs the others compare against (its hint when one is missing).
MEASURED_BY = {"baseline": "notebook 02", "dynamic batching": "notebook 03"}


def measured_by(variant: str) -> str:
    """The notebook that saves `variant`'s run, for a hint ('the notebook that measures it')."""
    return MEASURED_BY.get(variant, "the notebook that measures it")


def table(folder: Path | None = None, latest: bool = True,
          runs: list[dict] | None = None) -> pd.DataFrame:
    """All saved rows with their run's variant, mode, device and date (latest run per variant),
    from `folder`, or from `runs` already read with `load_runs`."""
    frames = []
    for data in (load_runs(folder) if runs is None else runs):
        df = pd.DataFrame(data["rows"])
        if df.empty:
            continue
        meta = data["meta"]
        df["variant"] = meta["variant"]
        for key in ("model", "mode", "device", "gpu_config_on_cpu", "date", "measurement_ms",
                    "quick", "notes"):
            if key not in df.columns:  # a row's own window (after a retry) takes precedence
                df[key] = meta.get(key)
        df["file"] = Path(data["path"]).name
        frames.append(df)
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    if latest:
        newest = out.groupby("variant")["date"].transform("max")
        out = out[out["date"] == newest]
    return out.sort_values(["variant", "concurrency"]).reset_index(drop=True)


def course_run_start(df: pd.DataFrame, model: str = "food_classifier",
                     reference: str = "baseline") -> str | None:
    """When the current course run began: the date of `model`'s newest `reference` run in a
    `table()` (notebook 02 measures the baseline first, and later notebooks reuse that run);
    None when there is none."""
    started = df.loc[(df["variant"] == reference) & (df["model"] == model), "date"]
    return None if started.empty else started.max()


def course_run(df: pd.DataFrame, model: str = "food_classifier",
               reference: str = "baseline") -> pd.DataFrame:
    """The rows of `table()` that belong to the current course run of `model`: its runs saved
    since its newest `reference` run (notebook 02 measures the baseline first, and later
    notebooks reuse that run), so runs left from an earlier course run are not compared with
    this one. Raises ValueError when `reference` was never saved for `model`."""
    if df.empty:
        raise ValueError(f"Nothing to compare yet: no run is saved in {settings.results_dir()}."
                         f" Run {measured_by(reference)} first ('{reference}'), then the "
                         "notebooks whose variants you want compared.")
    started = course_run_start(df, model, reference)
    if started is None:
        raise ValueError(f"Nothing to compare yet: no '{reference}' run of {model} is saved. "
                         f"Run {measured_by(reference)} first.")
    return df[(df["model"] == model) & (df["date"] >= started)].reset_index(drop=True)


def latest(variant: str, folder: Path | None = None) -> tuple[pd.DataFrame, Path] | None:
    """The newest saved run of `variant` as (rows, file), or None."""
    found = [d for d in load_runs(folder) if d["meta"]["variant"] == variant]
    if not found:
        return None
    data = max(found, key=lambda d: d["meta"]["date"])
    df = pd.DataFrame(data["rows"])
    df["variant"] = variant
    return df, Path(data["path"])
