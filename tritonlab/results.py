"""Saved measurements: one JSON file per run under data/results/, read back as one table."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd

from . import settings


def save_run(run) -> Path:
    """Write a PerfRun as `<results>/<date>_<variant>.json`, atomically (never half-written)."""
    from .perf import to_json

    folder = settings.results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    stamp = run.meta["date"].replace(":", "").replace("-", "").replace("+0000", "Z")
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", run.meta["variant"]).strip("-").lower()
    path = folder / f"{stamp}_{slug}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(to_json(run))
    os.replace(tmp, path)
    csv_tmp = path.with_suffix(".csv.tmp")
    run.df.to_csv(csv_tmp, index=False)  # the tidy table, for spreadsheets and pandas alike
    os.replace(csv_tmp, path.with_suffix(".csv"))
    return path


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
            print(f"skipped {path.name}: {exc}")
    return runs


def table(folder: Path | None = None, latest: bool = True) -> pd.DataFrame:
    """All saved rows with their run's variant, mode, device and date (latest run per variant)."""
    frames = []
    for data in load_runs(folder):
        df = pd.DataFrame(data["rows"])
        if df.empty:
            continue
        meta = data["meta"]
        df["variant"] = meta["variant"]
        for key in ("model", "mode", "device", "date", "measurement_ms", "quick"):
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


def latest(variant: str, folder: Path | None = None) -> tuple[pd.DataFrame, Path] | None:
    """The newest saved run of `variant` as (rows, file), or None."""
    found = [d for d in load_runs(folder) if d["meta"]["variant"] == variant]
    if not found:
        return None
    data = max(found, key=lambda d: d["meta"]["date"])
    df = pd.DataFrame(data["rows"])
    df["variant"] = variant
    return df, Path(data["path"])


def winners(df: pd.DataFrame) -> pd.DataFrame:
    """For each concurrency: the variant with the highest throughput and the one with lowest p95."""
    from .perf import P95, THROUGHPUT

    rows = []
    for level, group in df.groupby("concurrency"):
        best = group.loc[group[THROUGHPUT].idxmax()]
        fastest = group.loc[group[P95].idxmin()]
        rows.append({"concurrency": level,
                     "highest throughput": f"{best['variant']} ({best[THROUGHPUT]:.1f}/s)",
                     "lowest p95 latency": f"{fastest['variant']} ({fastest[P95] / 1000:.0f} ms)",
                     "variants measured": len(group)})
    return pd.DataFrame(rows)


def explain(df: pd.DataFrame, reference: str = "baseline") -> str:
    """Each variant against `reference` at the highest concurrency both measured, in numbers:
    throughput, and whether the gain came from less queueing or from less compute."""
    from .perf import P95, THROUGHPUT

    if reference not in set(df["variant"]):
        return f"no '{reference}' run saved: run notebook 02 first."
    if "model" in df.columns:  # compare like with like: runs of the reference's model only
        df = df[df["model"] == df.loc[df["variant"] == reference, "model"].iloc[0]]
    ref = df[df["variant"] == reference].set_index("concurrency")
    lines = []
    for variant, group in df[df["variant"] != reference].groupby("variant", sort=False):
        rows = group.set_index("concurrency")
        common = sorted(set(rows.index) & set(ref.index))
        if not common:
            lines.append(f"{variant}: no concurrency level in common with {reference}")
            continue
        level = common[-1]
        a, b = rows.loc[level], ref.loc[level]
        queue = (a["server queue (us)"] - b["server queue (us)"]) / 1000
        compute = (a["server compute infer (us)"] - b["server compute infer (us)"]) / 1000
        slower = a["server compute infer (us)"] / max(b["server compute infer (us)"], 1)
        if a[THROUGHPUT] >= b[THROUGHPUT]:
            cause = ("mostly less time in the model" if compute < 0 and -compute >= abs(queue)
                     else "mostly less waiting in the queue (one execution now serves several "
                          "requests, or executions run side by side)")
        elif slower >= 1.5:
            cause = f"each execution took {slower:.1f}x as long, so requests also queued longer"
        else:
            cause = "more waiting in the queue" if queue >= compute else "more time in the model"
        lines.append(
            f"{variant}: {a[THROUGHPUT] / b[THROUGHPUT]:.2f}x the {reference}'s throughput at "
            f"concurrency {level} ({a[THROUGHPUT]:.1f} vs {b[THROUGHPUT]:.1f} infer/s), p95 "
            f"{a[P95] / 1000:.0f} vs {b[P95] / 1000:.0f} ms; queue {queue:+.1f} ms and model "
            f"compute {compute:+.1f} ms per request: {cause}.")
    return "\n".join(lines)
