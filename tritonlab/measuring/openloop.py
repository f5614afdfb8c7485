"""Open-loop load: requests arrive on their own clock (Poisson), whether or not earlier ones
have been answered, as users' requests do. The closed-loop runs of `perf.run` keep a fixed
number of clients waiting for their answers, so they can never offer more than the server
takes; an open loop can, and shows what queueing does then.

Two drivers:
* `sweep`: perf_analyzer's request-rate mode with Poisson arrivals (`--async`, so no thread
  waits for an answer before the next request leaves), one fixed count of requests per offered
  rate, each request's send and answer times read from its `--profile-export-file`.
* `drive`: the same arrivals sent by tritonclient's gRPC `async_infer`, counting each answer's
  status. perf_analyzer stops at the first refused request (exit status 99, "Exceeds maximum
  queue size": checked with 2.51 here), so a server that refuses on purpose (a queue policy)
  is measured this way.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from .. import settings
from ..common import atomic_write, log
from ..serving import clients
from . import perf

OFFERED, ACHIEVED = "offered (req/s)", "achieved (infer/s)"
#: The rate the Poisson draw actually sent (requests over the span of their sends): a few
#: hundred random gaps average a little above or below the rate asked for.
SENT = "sent (req/s)"
P50_MS, P95_MS, P99_MS = "p50 latency (ms)", "p95 latency (ms)", "p99 latency (ms)"
QUEUE_MS, COMPUTE_MS = "server queue (ms)", "server compute infer (ms)"


def rates_around(capacity: float, fractions: list[float]) -> list[int]:
    """Offered rates as fractions of a measured capacity (infer/s), in whole requests per
    second (perf_analyzer's --request-rate-range refuses '162.7:162.7'), at least 1."""
    if capacity <= 0:
        raise ValueError("capacity must be > 0 infer/s: measure it first (perf.run)")
    return sorted({max(1, round(capacity * f)) for f in fractions})


def sweep_command(url: str, model: str, rate: float, requests: int, csv_path: Path,
                  export: Path, input_data: str) -> list[str]:
    """The exact perf_analyzer command for one offered rate (Poisson arrivals, asynchronous,
    `requests` requests then stop: no stability windows, which Poisson arrivals seldom pass)."""
    rate = int(rate)
    return [str(perf.binary()), "-m", model, "-u", url, "-i", "http", "--async",
            "--request-rate-range", f"{rate}:{rate}", "--request-distribution", "poisson",
            "--request-count", str(requests), "--input-data", input_data,
            "--profile-export-file", str(export), "-f", str(csv_path)]


def read_export(path: Path) -> pd.DataFrame:
    """perf_analyzer's profile export as one row per request: 'sent (s)' from the first send,
    'latency (ms)' (NaN when no answer came). The file embeds the raw request bytes, which are
    not UTF-8: read as Latin-1, which keeps JSON's ASCII structure intact."""
    data = json.loads(Path(path).read_text(encoding="latin-1"))
    requests = data["experiments"][0]["requests"]
    t0 = min(r["timestamp"] for r in requests)
    rows = [{"sent (s)": (r["timestamp"] - t0) / 1e9,
             "latency (ms)": ((r["response_timestamps"][-1] - r["timestamp"]) / 1e6
                              if r.get("response_timestamps") else math.nan)}
            for r in requests]
    return pd.DataFrame(rows)


def sent_rate(per_request: pd.DataFrame) -> float:
    """Requests per second actually sent: the requests over the span of their send times."""
    sending = float(per_request["sent (s)"].max())
    return (len(per_request) - 1) / sending if sending > 0 else math.nan


def summarize(per_request: pd.DataFrame, offered: float) -> dict:
    """One offered rate's figures from its requests: what came back per second over the span
    from the first send to the last answer, and the latency percentiles of the answered."""
    answered = per_request.dropna(subset=["latency (ms)"])
    done = answered["sent (s)"] + answered["latency (ms)"] / 1000
    span = float(done.max()) if len(answered) else math.nan
    lat = answered["latency (ms)"]
    return {OFFERED: offered, SENT: sent_rate(per_request),
            ACHIEVED: len(answered) / span if span and span > 0 else math.nan,
            P50_MS: lat.quantile(0.50), P95_MS: lat.quantile(0.95), P99_MS: lat.quantile(0.99),
            "requests": len(per_request), "answered": len(answered),
            "sending (s)": float(per_request["sent (s)"].max())}


def requests_for(rate: float, seconds: float, min_requests: int) -> int:
    """Requests to send at `rate` for about `seconds`, at least `min_requests` (enough for a
    p99 that is more than the slowest one or two) and at least `rate` (perf_analyzer refuses a
    request count below the rate)."""
    return max(min_requests, math.ceil(rate * seconds), math.ceil(rate))


def sweep(server, model: str, variant: str, rates: list[float], seconds: float = 5.0,
          min_requests: int = 300, input_data: str = "", save: bool = True) -> pd.DataFrame:
    """Offer each rate in `rates` (req/s, Poisson) for about `seconds` (`requests_for`); one
    row per rate: offered and achieved rate, p50/p95/p99 latency (ms) from every request, and
    Triton's mean queue and compute time per request (perf_analyzer's server-side figures, ms).

    Above capacity the queue grows for as long as the load lasts, so those rows describe that
    many seconds of overload: a longer burst would wait longer. Raises perf.PerfError when
    perf_analyzer fails (its output is quoted)."""
    from tqdm.auto import tqdm

    input_data = input_data or str(settings.PERF_INPUTS / "food_classifier_raw.json")
    env = perf.environment()
    workdir = Path(tempfile.mkdtemp(prefix="openloop_"))
    rows, commands = [], []
    try:
        for rate in tqdm(rates, desc=f"open loop {variant}", unit="rate"):
            requests = requests_for(rate, seconds, min_requests)
            csv_path, export = workdir / f"r{rate}.csv", workdir / f"r{rate}.json"
            cmd = sweep_command(server.http_url, model, rate, requests, csv_path, export,
                                input_data)
            proc = _run_sweep_level(cmd, workdir, env, requests, rate)
            if proc.returncode != 0 or not export.exists():
                output = proc.stdout + proc.stderr
                usage = re.match(r"\s*(Error: [^\n]+)", output)
                why = (usage.group(1) if usage else
                       perf.explain_failure(output, model, perf.PerfSettings()))
                raise perf.PerfError(f"perf_analyzer failed at {rate} req/s for '{model}': "
                                     f"{why}\ncommand: {' '.join(cmd)}\nlast lines:\n"
                                     f"{perf._tail(output)}")
            commands.append(cmd)
            row = summarize(read_export(export), rate)
            server_side = pd.read_csv(csv_path).iloc[0]
            row[QUEUE_MS] = server_side["Server Queue"] / 1000
            row[COMPUTE_MS] = server_side["Server Compute Infer"] / 1000
            rows.append(row)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    df = pd.DataFrame(rows)
    df.insert(0, "variant", variant)
    if save:
        _save("sweep", variant, df, {"model": model, "seconds per rate": seconds,
                                     "commands": [" ".join(c) for c in commands]})
    return df


def _run_sweep_level(cmd: list[str], workdir: Path, env: dict, requests: int,
                     rate: float, attempts: int = 2) -> subprocess.CompletedProcess:
    """One perf_analyzer run of the sweep, stopped when it takes far longer than sending
    `requests` at `rate` should, and tried once more then: once, in a full test run, 12
    requests at 4 req/s had not finished after 129 s, while the same command run alone here
    finished in 7 s, 20 times out of 20 (the cause was not found)."""
    limit = 60 + 3 * requests / rate
    tail = ""
    for attempt in range(1, attempts + 1):
        try:
            return perf.run_perf_analyzer(cmd, env, workdir, limit)
        except subprocess.TimeoutExpired as exc:
            tail = perf._tail(perf._text(exc.stdout) + perf._text(exc.stderr))
            if attempt < attempts:
                log.info(f"{rate} req/s: perf_analyzer did not finish {requests} requests "
                         f"within {limit:.0f} s; measuring this rate again.")
    raise perf.PerfError(f"perf_analyzer did not finish {requests} requests at {rate} req/s "
                         f"within {limit:.0f} s, {attempts} times; command: {' '.join(cmd)}"
                         f"\nlast lines:\n{tail}")


def knee(df: pd.DataFrame, keep_up: float = 0.9, latency_factor: float = 2.0) -> dict | None:
    """The lowest offered rate where the server stops keeping up: achieved throughput under
    `keep_up` of the rate actually sent (SENT), or p99 over `latency_factor` times the p99 at
    the lightest load. None when no rate measured crossed either line. (The achieved rate
    counts from the first send to the last answer, so the last requests' latency lowers it a
    little even below capacity: hence 0.9, not 1.)"""
    ordered = df.sort_values(OFFERED).reset_index(drop=True)
    base = ordered[P99_MS].iloc[0]
    for _, row in ordered.iterrows():
        behind = row[ACHIEVED] < keep_up * row[SENT]
        slow = row[P99_MS] > latency_factor * base
        if behind or slow:
            why = []
            if behind:
                why.append(f"{row[ACHIEVED]:.1f} infer/s came back for {row[SENT]:.1f} "
                           "req/s sent")
            if slow:
                why.append(f"p99 {row[P99_MS]:.0f} ms, {row[P99_MS] / base:.1f}x the "
                           f"{base:.0f} ms at {ordered[OFFERED].iloc[0]:.1f} req/s")
            return {"offered": row[OFFERED], "why": "; ".join(why)}
    return None


def explain(df: pd.DataFrame) -> str:
    """What the sweep's own numbers say: where the knee is, and how much of the latency was
    waiting in Triton's queue against computing, at the lightest and the heaviest load."""
    ordered = df.sort_values(OFFERED).reset_index(drop=True)
    light, heavy = ordered.iloc[0], ordered.iloc[-1]
    lines = []
    found = knee(ordered)
    lines.append(f"knee at {found['offered']:.1f} req/s offered: {found['why']}." if found else
                 f"no knee up to {heavy[OFFERED]:.1f} req/s: every rate was kept up with.")
    for label, row in (("lightest", light), ("heaviest", heavy)):
        total = row[QUEUE_MS] + row[COMPUTE_MS]
        share = row[QUEUE_MS] / total if total > 0 else 0
        lines.append(f"{label} load ({row[OFFERED]:.1f} req/s): on average {row[QUEUE_MS]:.1f} "
                     f"ms waiting in Triton's queue and {row[COMPUTE_MS]:.1f} ms computing "
                     f"({share:.0%} of the server's time waiting); p99 {row[P99_MS]:.0f} ms.")
    if found:
        queue_x = heavy[QUEUE_MS] / light[QUEUE_MS] if light[QUEUE_MS] > 0 else math.inf
        compute_x = heavy[COMPUTE_MS] / light[COMPUTE_MS] if light[COMPUTE_MS] > 0 else math.inf
        lines.append(f"From the lightest to the heaviest load the queue time grew {queue_x:.0f}x"
                     f" ({light[QUEUE_MS]:.1f} -> {heavy[QUEUE_MS]:.1f} ms) and the compute "
                     f"time per request changed {compute_x:.1f}x ({light[COMPUTE_MS]:.1f} -> "
                     f"{heavy[COMPUTE_MS]:.1f} ms).")
    if (ordered["requests"] < 100).any():
        lines.append("Some rates rest on fewer than 100 requests: their p99 is the slowest "
                     "one or two requests; read it as rough.")
    return "\n".join(lines)


# --- the open loop through tritonclient, counting refusals -----------------------------------


def arrival_times(rate: float, requests: int, seed: int = 0) -> np.ndarray:
    """Poisson arrivals: `requests` send times (s from the start) with exponential gaps of mean
    1/`rate`, from a seeded generator so that two configs face the very same load."""
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=requests)
    return np.cumsum(gaps) - gaps[0]


def drive(server, model: str, rate: float, requests: int, images: list[Path],
          seed: int = 0, priority_share: float = 0.0, timeout_s: float = 120.0) -> pd.DataFrame:
    """Send `requests` requests at Poisson times of mean `rate` req/s through gRPC
    `async_infer`, never waiting for answers; one row per request: 'sent (s)', 'latency (ms)',
    'status' ('ok', 'refused' for Triton's queue-full and timeout refusals, or 'error: ...'),
    and 'priority' (1 for the first `priority_share` of requests in a seeded draw, else 0:
    the model's default level).

    Raises TimeoutError when answers are still missing `timeout_s` after the last send."""
    import tritonclient.grpc as grpcclient

    times = arrival_times(rate, requests, seed)
    urgent = np.random.default_rng(seed + 1).random(requests) < priority_share
    payloads = [Path(p).read_bytes() for p in images]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    rows: list[dict] = [{} for _ in range(requests)]
    left = threading.Semaphore(0)

    def answered(i: int, began: float):
        def callback(result, error):
            latency = (time.perf_counter() - began) * 1000
            if error is None:
                status = "ok"
            elif clients.REFUSED_UNDER_LOAD.search(error.message() or ""):
                status = "refused"
            else:
                status = f"error: {error.message()}"
            rows[i].update({"latency (ms)": latency, "status": status})
            left.release()
        return callback

    start = time.perf_counter()
    try:
        for i, at in enumerate(times):
            delay = start + at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            data = payloads[i % len(payloads)]
            tensor = grpcclient.InferInput("INPUT_IMAGE", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[data]], dtype=object))
            now = time.perf_counter()
            rows[i] = {"sent (s)": now - start, "priority": 1 if urgent[i] else 0}
            client.async_infer(model, [tensor], callback=answered(i, now),
                               priority=1 if urgent[i] else 0)
        deadline = time.monotonic() + timeout_s
        for _ in range(requests):
            if not left.acquire(timeout=max(0.0, deadline - time.monotonic())):
                missing = sum(1 for r in rows if "status" not in r)
                raise TimeoutError(f"{missing} of {requests} requests still had no answer "
                                   f"{timeout_s:.0f} s after the last was sent")
    finally:
        client.close()
    return pd.DataFrame(rows)


def overload_runs(server, model: str, configs_by_label: dict, rate: float, requests: int,
                  images: list[Path], priority_share: float = 0.0, warm: int = 50) -> dict:
    """Each config of `configs_by_label` deployed in turn, warmed with `warm` requests at a
    third of `rate` (so no config is measured while its new model processes start up), then
    `drive`n with the same seeded arrivals; returns {label: per-request DataFrame}."""
    from ..serving import deploy

    runs = {}
    for label, cfg in configs_by_label.items():
        deploy.deploy(server, cfg)
        drive(server, model, rate / 3, warm, images)
        runs[label] = drive(server, model, rate, requests, images, priority_share=priority_share)
    return runs


def overload_summary(per_request: pd.DataFrame, label: str) -> dict:
    """One driven run in a row: how many were answered, refused or failed, the answered ones'
    p50/p99, the slowest refusal (how long a refused client waited to learn it), and the median
    latency of the first and the last tenth of the answered requests, in the order sent."""
    ok = per_request[per_request["status"] == "ok"]["latency (ms)"]
    refused = per_request[per_request["status"] == "refused"]["latency (ms)"]
    failed = per_request["status"].str.startswith("error").sum()
    n = len(per_request)
    answered = per_request[per_request["status"] == "ok"].sort_values("sent (s)")["latency (ms)"]
    tenth = max(1, len(answered) // 10)
    return {"config": label, "requests": n, SENT: sent_rate(per_request),
            "answered": len(ok), "refused": len(refused),
            "failed": int(failed), "refused share": len(refused) / n if n else math.nan,
            "answered p50 (ms)": ok.quantile(0.5) if len(ok) else math.nan,
            "answered p99 (ms)": ok.quantile(0.99) if len(ok) else math.nan,
            "slowest refusal (ms)": refused.max() if len(refused) else math.nan,
            "first tenth p50 (ms)": answered.head(tenth).median() if len(ok) else math.nan,
            "last tenth p50 (ms)": answered.tail(tenth).median() if len(ok) else math.nan}


def explain_overload(summary: pd.DataFrame, without: str, with_policy: str,
                     timeout_ms: float) -> str:
    """The overload comparison in words, every figure from `summary` (rows of
    `overload_summary`, one per config label)."""
    a = summary.set_index("config").loc[without]
    b = summary.set_index("config").loc[with_policy]
    lines = [f"Both faced {a['requests']:.0f} requests sent at about {a[SENT]:.0f} req/s."]
    lines += [f"{without}: {a['answered']:.0f} of {a['requests']:.0f} answered, p99 "
             f"{a['answered p99 (ms)']:.0f} ms; its answered requests' median latency was "
             f"{a['first tenth p50 (ms)']:.0f} ms for the first tenth sent and "
             f"{a['last tenth p50 (ms)']:.0f} ms for the last tenth."]
    lines.append(f"{with_policy}: {b['answered']:.0f} answered (p99 "
                 f"{b['answered p99 (ms)']:.0f} ms), {b['refused']:.0f} refused "
                 f"({b['refused share']:.0%})"
                 + (f", {b['failed']:.0f} failed otherwise" if b["failed"] else "") + ".")
    if b["answered"] and a["answered"]:
        ratio = a["answered p99 (ms)"] / b["answered p99 (ms)"]
        if ratio >= 1:
            lines.append(f"The answered requests' p99 is {ratio:.1f}x lower with the policy: "
                         "its queue never holds more than its bound, so no accepted request "
                         "waits behind more than that.")
        else:
            lines.append(f"The answered requests' p99 is {1 / ratio:.1f}x higher with the "
                         "policy in this run: look at the plot for when the slow answers "
                         "came, and at the sent rate: was the server overloaded at all?")
    if b["refused"]:
        late = b["slowest refusal (ms)"] - timeout_ms
        lines.append(
            f"The slowest refusal came after {b['slowest refusal (ms)']:.0f} ms, "
            + (f"{late:.0f} ms past the {timeout_ms:g} ms queue timeout: Triton checks timeouts "
               "only when it schedules (server#7512), so a refusal can wait for the batch "
               "running ahead of it." if late > 0 else
               f"within the {timeout_ms:g} ms queue timeout."))
    if min(a["answered"], b["answered"]) < 100:
        lines.append("One config has fewer than 100 answered requests: its p99 is one or two "
                     "requests; read it as rough.")
    return "\n".join(lines)


def by_priority(per_request: pd.DataFrame) -> pd.DataFrame:
    """Answered requests by priority (1: sent with priority 1; 0: the default level): how many,
    and their p50 and p99 latency (ms)."""
    ok = per_request[per_request["status"] == "ok"]
    return ok.groupby("priority")["latency (ms)"].agg(
        answered="count", p50=lambda s: s.quantile(0.5), p99=lambda s: s.quantile(0.99)
    ).rename(columns={"p50": "p50 (ms)", "p99": "p99 (ms)"}).round(1)


_STAMP = "%Y%m%dT%H%M%SZ"  # how _save names a run's file (its UTC time)


def saved_since(start: str | None, folder: Path | None = None) -> list[Path]:
    """The runs `_save` kept under <results>/open_loop/ from `start` on (an ISO date such as
    `results.course_run_start` gives; all of them when None), oldest first."""
    since = (datetime.fromisoformat(start).astimezone(timezone.utc) if start else None)
    found = []
    for path in sorted(((folder or settings.results_dir()) / "open_loop").glob("*.json")):
        try:
            when = datetime.strptime(path.name[:16], _STAMP).replace(tzinfo=timezone.utc)
        except ValueError:  # not a file _save named
            continue
        if since is None or when >= since.replace(microsecond=0):
            found.append(path)
    return found


def _save(kind: str, variant: str, df: pd.DataFrame, meta: dict) -> Path:
    """Keep a run under <results>/open_loop/ (beside, not among, the closed-loop runs)."""
    date = datetime.now(timezone.utc).strftime(_STAMP)
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", variant).strip("-").lower()
    path = settings.results_dir() / "open_loop" / f"{date}_{kind}_{slug}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"kind": kind, "variant": variant, "date": date, **meta,
            "rows": json.loads(df.to_json(orient="records"))}
    log.info(f"saved {path.relative_to(settings.results_dir().parent)}")
    return atomic_write(path, json.dumps(body, indent=1))
