"""perf_analyzer from a cell: build the command, run it over concurrency levels, parse, save.

Each concurrency level is one perf_analyzer run (so a progress bar can follow them and each
keeps its own raw output). The CSVs it writes are parsed into one tidy DataFrame, ordered by
concurrency, with microseconds as in the CSV and column names for people. Every run is saved
under data/results/ with what was measured, where and how.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import requests

from . import devices, results, settings
from .metrics import MetricsSampler

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
#: The server-side part of a request's latency, in the order it happens.
BREAKDOWN = ["server queue (us)", "server compute input (us)", "server compute infer (us)",
             "server compute output (us)"]
CLIENT_SIDE = ["client send (us)", "network + server send/recv (us)", "client recv (us)"]


class PerfError(RuntimeError):
    """perf_analyzer could not measure; the message says what happened and what to try."""


@dataclass
class PerfSettings:
    """How perf_analyzer measures. Quick mode only shortens the numbers, never the code path."""

    concurrency: list[int] = field(default_factory=lambda: [1, 8, 16])
    measurement_ms: int = 5000        # one measurement window
    stability_percent: int = 10       # windows must agree within this much
    max_trials: int = 10              # windows tried before giving up
    protocol: str = "http"
    batch_size: int = 1               # images per request
    input_data: str = ""              # JSON input file; default: the raw-JPEG sample file
    collect_metrics: bool = False     # GPU utilization columns (GPU node only)

    @classmethod
    def for_course(cls, concurrency: list[int], quick_concurrency: list[int] | None = None,
                   **kw) -> PerfSettings:
        """Full windows normally; quick mode (tests, `make lab`): 1.5 s windows, fewer levels."""
        if settings.quick_mode():
            kw.setdefault("measurement_ms", 1500)
            kw.setdefault("max_trials", 6)
            concurrency = quick_concurrency or concurrency
        return cls(concurrency=list(concurrency), **kw)


@dataclass
class PerfRun:
    """One measured variant: the tidy table, server metrics sampled meanwhile, and provenance."""

    df: pd.DataFrame
    meta: dict
    raw: dict[int, str]
    metrics: pd.DataFrame
    steps: pd.DataFrame = field(default_factory=pd.DataFrame)  # an ensemble's composing models
    path: Path | None = None

    def __repr__(self) -> str:
        return f"PerfRun({self.meta['variant']!r}, {len(self.df)} levels, saved to {self.path})"


def binary() -> Path:
    """The perf_analyzer shipped in the tritonclient[all] wheel, next to this Python."""
    path = Path(sys.executable).parent / "perf_analyzer"
    if not path.exists():
        found = shutil.which("perf_analyzer")
        if not found:
            raise PerfError("perf_analyzer is not installed: run `make install` "
                            "(it comes with tritonclient[all]==2.51.0).")
        path = Path(found)
    return path


def environment() -> dict[str, str]:
    """perf_analyzer links libcudart.so.12 even on a CPU machine: add the wheel's copy."""
    import importlib.util

    env = dict(os.environ)
    spec = importlib.util.find_spec("nvidia")
    libs = []
    for root in (spec.submodule_search_locations if spec else []):
        lib = Path(root) / "cuda_runtime" / "lib"
        if (lib / "libcudart.so.12").exists():
            libs.append(str(lib))
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(libs)
    return env


def command(url: str, model: str, concurrency: int, csv_path: Path, opts: PerfSettings,
            metrics_url: str | None = None) -> list[str]:
    """The exact perf_analyzer command line for one concurrency level."""
    input_data = opts.input_data or str(settings.PERF_INPUTS / "food_classifier_raw.json")
    cmd = [
        str(binary()), "-m", model, "-u", url, "-i", opts.protocol,
        "--concurrency-range", f"{concurrency}:{concurrency}",
        "-b", str(opts.batch_size),
        "--input-data", input_data,
        "--measurement-interval", str(opts.measurement_ms),
        "--stability-percentage", str(opts.stability_percent),
        "--max-trials", str(opts.max_trials),
        "-f", str(csv_path),
    ]
    if opts.collect_metrics and metrics_url:
        cmd += ["--collect-metrics", "--metrics-url", metrics_url]
    return cmd


def parse_csv(path: Path) -> pd.DataFrame:
    """perf_analyzer's CSV as a DataFrame with the course's column names, ordered by concurrency."""
    raw = pd.read_csv(path)
    df = raw.rename(columns={k: v for k, v in COLUMNS.items() if k in raw.columns})
    return df.sort_values("concurrency").reset_index(drop=True)


def explain_failure(output: str, model: str, opts: PerfSettings) -> str:
    """What a failed perf_analyzer run means, and what to try."""
    if "Failed to obtain stable measurement" in output:
        return ("throughput or latency kept changing by more than "
                f"{opts.stability_percent}% between {opts.measurement_ms} ms windows. Try a longer "
                "window (measurement_ms), a higher stability_percent, fewer instances competing "
                "for the CPU, or stop other work on this machine.")
    if re.search(r"[Uu]nable to (get|connect)|Connection refused|failed to connect|"
                 r"Couldn't connect|Socket closed", output):
        return ("the server could not be reached or went away during the run: check that Triton "
                "is running (server.is_ready()) and look at server.logs().")
    if re.search(r"not (found|ready)|Request for unknown model|unknown model", output):
        return (f"model '{model}' is not loaded or not ready on the server: "
                "load it (server.reload_model) and try again.")
    if re.search(r"input.data|json|parse|Failed to read", output, re.IGNORECASE):
        return (f"the input file {opts.input_data or 'food_classifier_raw.json'} could not be "
                "used: rebuild it with `make install` (python -m tritonlab prepare).")
    return "see perf_analyzer's output above."


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def _server_state(server) -> str:
    """Empty while Triton is up; otherwise what happened to it and how to go on."""
    if server.is_live():
        return ""
    lines = [ln for ln in server.logs(lines=200).splitlines()
             if ln.strip() and not ln.lstrip().startswith(("|", "+"))]  # no settings tables
    logs = "\n".join(lines[-6:])
    return (f"Triton went away during the run ({server.exit_description()}). Start it again "
            "with server.restart() (or `make serve`), then measure again."
            + (f"\nlast server log lines:\n{logs}" if logs.strip() else ""))


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run(server, model: str, variant: str, opts: PerfSettings | None = None, notes: str = "",
        save: bool = True, sample_metrics: bool = True) -> PerfRun:
    """Measure `model` on `server` at each concurrency level; returns (and saves) a PerfRun."""
    from tqdm.auto import tqdm

    opts = opts or PerfSettings.for_course([1, 8, 16])
    if not server.is_ready():
        raise PerfError(f"Triton at {server.http_url} is not ready: start it (server.start()) "
                        "before measuring.")
    url = server.http_url if opts.protocol == "http" else server.grpc_url
    env = environment()
    rows, raw, commands, step_rows = [], {}, [], []
    sampler = MetricsSampler(server.metrics_url, model=model) if sample_metrics else None
    workdir = Path(tempfile.mkdtemp(prefix="perf_"))
    try:
        if sampler:
            sampler.start()
        for level in tqdm(opts.concurrency, desc=f"perf_analyzer {variant}", unit="level"):
            # A bare file name: for an ensemble perf_analyzer also writes one file per composing
            # model, named <model>_v<version>.<this name>, in its working folder.
            csv_path = Path(f"c{level}.csv")
            level_opts = opts
            for attempt in (1, 2, 3):
                cmd = command(url, model, level, csv_path, level_opts, server.metrics_url)
                limit = max(120, level_opts.measurement_ms / 1000 * (level_opts.max_trials + 4) * 3)
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                          cwd=workdir, timeout=limit)
                except subprocess.TimeoutExpired as exc:
                    output = _text(exc.stdout) + _text(exc.stderr)
                    raise PerfError(f"perf_analyzer did not finish within {limit:.0f} s at "
                                    f"concurrency {level} for '{model}' and was stopped. "
                                    f"{_server_state(server)}\ncommand: {' '.join(cmd)}\n"
                                    f"last lines:\n{_tail(output)}") from None
                output = proc.stdout + proc.stderr
                if proc.returncode == 0 and (workdir / csv_path).exists():
                    break
                unstable = "Failed to obtain stable measurement" in output
                if attempt < 3 and unstable:
                    # A shared, noisy machine: measure again with a looser tolerance and, the
                    # last time, windows three times as long (a slow variant may finish only a
                    # few requests in a short window), and say so. Both are saved with each row
                    # (columns stability_percent and measurement_ms).
                    looser = max(30, 2 * opts.stability_percent) if attempt == 1 else 100
                    window = opts.measurement_ms * (1 if attempt == 1 else 3)
                    print(f"concurrency {level}: not stable within "
                          f"{level_opts.stability_percent}%; measuring again with {looser}%"
                          + (f" and {window} ms windows (numbers will be noisy: is something "
                             "else using this machine?)" if attempt == 2 else "") + ".")
                    level_opts = PerfSettings(**{**asdict(opts), "stability_percent": looser,
                                                 "measurement_ms": window,
                                                 "max_trials": opts.max_trials + 4})
                    continue
                gone = _server_state(server)
                raise PerfError(f"perf_analyzer failed at concurrency {level} for '{model}': "
                                + (gone or explain_failure(output, model, level_opts)) + "\n"
                                f"command: {' '.join(cmd)}\nlast lines:\n{_tail(output)}")
            commands.append(cmd)
            raw[level] = output
            row = parse_csv(workdir / csv_path).iloc[0].to_dict()
            row["stability_percent"] = level_opts.stability_percent
            row["measurement_ms"] = level_opts.measurement_ms
            rows.append(row)
            for step_file in sorted(workdir.glob(f"*.{csv_path.name}")):
                step = parse_csv(step_file).iloc[0].to_dict()
                step["step"] = step_file.name.split(".")[0].rsplit("_v", 1)[0]
                step["concurrency"] = level
                step_rows.append(step)
    finally:
        if sampler:
            sampler.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    df = pd.DataFrame(rows).sort_values("concurrency").reset_index(drop=True)
    df.insert(0, "variant", variant)
    df["concurrency"] = df["concurrency"].astype(int)
    meta = describe_run(server, model, variant, opts, commands, notes)
    metrics = sampler.frame() if sampler else pd.DataFrame()
    steps = pd.DataFrame(step_rows)
    if not steps.empty:
        steps.insert(0, "variant", variant)
    result = PerfRun(df=df, meta=meta, raw=raw, metrics=metrics, steps=steps)
    if save:
        result.path = results.save_run(result)
    return result


def describe_run(server, model: str, variant: str, opts: PerfSettings, commands: list[list[str]],
                 notes: str = "") -> dict:
    """What was measured, where and how: saved with every run."""
    base = f"http://{server.http_url}"
    try:
        version = requests.get(base + "/v2", timeout=5).json().get("version")
        config = requests.get(f"{base}/v2/models/{model}/config", headers=server.api_headers,
                              timeout=5).json()
    except (requests.RequestException, ValueError):
        version, config = None, None
    return {
        "variant": variant,
        "model": model,
        "mode": server.mode,
        "device": devices.describe(config),
        "machine": devices.machine(),
        "server_version": version,
        "config": config,
        "concurrency": list(opts.concurrency),
        "measurement_ms": opts.measurement_ms,
        "stability_percent": opts.stability_percent,
        "protocol": opts.protocol,
        "batch_size": opts.batch_size,
        "input_data": Path(opts.input_data or "food_classifier_raw.json").name,
        "quick": settings.quick_mode(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commands": [" ".join(c) for c in commands],
        "notes": notes,
    }


def show_command(server, model: str, opts: PerfSettings | None = None,
                 concurrency: int | None = None) -> str:
    """The command one level would run, to show in a cell before running it."""
    opts = opts or PerfSettings.for_course([1, 8, 16])
    level = concurrency or opts.concurrency[0]
    cmd = command(server.http_url if opts.protocol == "http" else server.grpc_url, model, level,
                  Path("out.csv"), opts, server.metrics_url)
    cmd[0] = "perf_analyzer"
    return " ".join(cmd)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """The columns a person reads first: throughput and latency percentiles in ms."""
    out = df[["variant", "concurrency", THROUGHPUT]].copy()
    for col in (P50, P95, P99):
        out[col.replace("(us)", "(ms)")] = df[col] / 1000
    out["server queue (ms)"] = df["server queue (us)"] / 1000
    out["server compute infer (ms)"] = df["server compute infer (us)"] / 1000
    return out.round(2)


def to_json(run: PerfRun) -> str:
    return json.dumps({"meta": run.meta, "rows": run.df.to_dict(orient="records"),
                       "steps": run.steps.to_dict(orient="records"),
                       "metrics": run.metrics.to_dict(orient="records"),
                       "raw": {str(k): v for k, v in run.raw.items()}}, indent=1, default=str)


def explain_queue(df: pd.DataFrame) -> str:
    """The queue-versus-compute story of one variant, told from its measured breakdown."""
    rows = df.sort_values("concurrency")
    lo, hi = rows.iloc[0], rows.iloc[-1]
    ms = lambda row, col: row[col] / 1000  # noqa: E731
    lines = [
        f"At concurrency {lo['concurrency']}: {lo[THROUGHPUT]:.1f} infer/s; a request spends "
        f"{ms(lo, 'server queue (us)'):.1f} ms queued and {ms(lo, 'server compute infer (us)'):.1f}"
        f" ms in the model (p50 latency {ms(lo, P50):.1f} ms).",
        f"At concurrency {hi['concurrency']}: {hi[THROUGHPUT]:.1f} infer/s; a request spends "
        f"{ms(hi, 'server queue (us)'):.1f} ms queued and {ms(hi, 'server compute infer (us)'):.1f}"
        f" ms in the model (p50 latency {ms(hi, P50):.1f} ms).",
    ]
    gain = hi[THROUGHPUT] / lo[THROUGHPUT]
    queue_share = hi["server queue (us)"] / max(hi[P50], 1)
    if gain < 1.3 and queue_share > 0.5:
        lines.append(f"{hi['concurrency']}x the clients gave {gain:.2f}x the throughput: the model "
                     "was already busy, so extra requests only wait in the queue, which is "
                     f"{queue_share:.0%} of the p50 latency.")
    else:
        lines.append(f"{hi['concurrency']}x the clients gave {gain:.2f}x the throughput, with "
                     f"{queue_share:.0%} of the p50 latency spent in the queue.")
    return "\n".join(lines)


def baseline(server, opts: PerfSettings, variant: str = "baseline") -> pd.DataFrame:
    """The baseline's latest saved run if its file exists (notebook 02), else measured now."""
    from . import deploy

    saved = results.latest(variant)
    if saved is not None:
        df, path = saved
        print(f"{variant}: using the run saved in {path} (from notebook 02).")
        return df
    print(f"{variant}: no saved run found; measuring it now.")
    deploy.restore_baseline(server)
    return run(server, "food_classifier", variant, opts).df


def compare(before: pd.DataFrame, after: pd.DataFrame) -> str:
    """What changed between two measured variants, level by level, from their own numbers.

    Throughput and p95 latency, and the two server-side parts that explain them: the time a
    request waited in Triton's queue and the model's compute time it was part of (with dynamic
    batching, a request's compute time is that of the whole batch it ran in).
    """
    b_all, a_all = before.set_index("concurrency"), after.set_index("concurrency")
    name_b, name_a = before["variant"].iloc[0], after["variant"].iloc[0]
    lines = [f"{name_a} against {name_b}:"]
    for level in sorted(set(b_all.index) & set(a_all.index)):
        b, a = b_all.loc[level], a_all.loc[level]
        ms = lambda row, col: row[col] / 1000  # noqa: E731
        lines.append(
            f"  concurrency {level}: {b[THROUGHPUT]:.1f} -> {a[THROUGHPUT]:.1f} infer/s "
            f"({a[THROUGHPUT] / b[THROUGHPUT]:.2f}x); p95 {ms(b, P95):.0f} -> {ms(a, P95):.0f} ms; "
            f"queued {ms(b, 'server queue (us)'):.1f} -> {ms(a, 'server queue (us)'):.1f} ms, "
            f"model compute {ms(b, 'server compute infer (us)'):.1f} -> "
            f"{ms(a, 'server compute infer (us)'):.1f} ms per request")
    if len(lines) == 1:
        lines.append("  no concurrency level measured in both runs")
    return "\n".join(lines)
