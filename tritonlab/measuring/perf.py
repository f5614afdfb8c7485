"""perf_analyzer from a cell: build the command, run it over concurrency levels, parse, save.

Each concurrency level is one perf_analyzer run (so a progress bar can follow them and each
keeps its own raw output). The CSVs it writes are parsed into one tidy DataFrame, ordered by
concurrency, with microseconds as in the CSV and column names for people. Every run is saved
under data/results/ with what was measured, where and how.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from .. import settings
from ..common import log
from ..serving import clients, configs, deploy, devices
from . import results
from .metrics import MetricsSampler
from .results import COLUMNS, P50, THROUGHPUT, PerfRun


class PerfError(RuntimeError):
    """perf_analyzer could not measure; the message says what happened and what to try."""


class MeasurementInterrupted(KeyboardInterrupt):
    """The measurement was interrupted (Jupyter's stop button, Ctrl-C): perf_analyzer was
    stopped and waited for, and nothing was saved. A KeyboardInterrupt, so that whatever
    stops on one (`make lab`, a loop over runs) stops on this too."""


def run_perf_analyzer(cmd: list[str], env: dict, workdir: Path,
                      timeout: float) -> subprocess.CompletedProcess:
    """One perf_analyzer run, its output captured as text, as `subprocess.run` would, with
    this difference: interrupted, it is killed and reaped (subprocess.run leaves it a zombie
    until the kernel exits) and MeasurementInterrupted is raised. subprocess.TimeoutExpired
    (with the output so far) after `timeout` seconds, perf_analyzer killed and reaped."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=workdir)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(cmd, timeout, output=out, stderr=err) from None
    except KeyboardInterrupt:
        proc.kill()
        proc.communicate()
        raise MeasurementInterrupted("measurement interrupted: perf_analyzer was stopped, and "
                                     "nothing of this run was saved") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@dataclass
class PerfSettings:
    """How perf_analyzer measures. Quick mode only shortens the numbers, never the code path.

    Windows fit the model: with `adapt_windows`, a short probe (a few requests) tells how fast
    the model answers, and each level's window is made long enough to hold about
    `min_requests` requests (never shorter than `measurement_ms`). A window that must be
    lengthened for a slow model holds few requests, whose count alone varies by about one in
    `min_requests`: its tolerance is at least 300 / `min_requests` percent.
    """

    concurrency: list[int] = field(default_factory=lambda: [1, 8, 16])
    measurement_ms: int = 5000        # one time window, at least
    stability_percent: int = 10       # windows must agree within this much
    max_trials: int = 10              # windows tried before giving up
    protocol: str = "http"
    batch_size: int = 1               # images per request
    input_data: str = ""              # JSON input file; default: the raw-JPEG sample file
    collect_metrics: bool = False     # GPU utilization columns (GPU node only)
    min_requests: int = 30            # fewest requests one window should hold
    adapt_windows: bool = True        # probe first and fit the windows to the model's speed
    max_attempts: int = 4             # measurements of one level before giving up
    max_window_ms: int = 300_000      # no window is made longer than this
    # False: each level is measured once over `window_requests` requests (perf_analyzer's
    # --request-count), with no probe and no stability windows (measurement_mode COUNT_MODE):
    # for models that take seconds per request, in quick mode only (see `for_course`)
    stability_windows: bool = True

    @classmethod
    def for_course(cls, concurrency: list[int], quick_concurrency: list[int] | None = None,
                   quick_once: bool = False, **kw) -> PerfSettings:
        """Full windows normally; quick mode (tests, `make lab`): windows of 1.5 s or of about
        10 requests, whichever is longer, that agree within 30 %, and fewer levels; with
        `quick_once`, each level measured once over about as many requests as one such window
        holds, without stability windows (for a model that takes seconds per request, whose
        three agreeing windows would take minutes per level)."""
        if settings.quick_mode():
            kw.setdefault("measurement_ms", 1500)
            # windows this short, on 2 cores shared with perf_analyzer, seldom agree within 10 %:
            # allowing 30 % from the start saves the retry that would allow it (`remedy`); the
            # rows say 30 %, and reports judge a change only beyond it
            kw.setdefault("stability_percent", 30)
            kw.setdefault("max_trials", 6)
            kw.setdefault("min_requests", 10)
            kw.setdefault("stability_windows", not quick_once)
            concurrency = quick_concurrency or concurrency
        return cls(concurrency=list(concurrency), **kw)


#: perf_analyzer's measurement mode for every run: windows of a fixed length (`Window.ms`).
MEASUREMENT_MODE = "time_windows"
#: A level whose windows never agreed, not even within 100 %, measured once over a fixed count of
#: requests (`--request-count`): its row keeps the 100 % it failed, so reports judge it only on
#: a change larger than that.
UNSTABLE_MODE = "request_count (not stable)"
#: A level measured once over a fixed count of requests by choice (PerfSettings with
#: stability_windows=False): no check that the figures would repeat, so its row says
#: stability_percent 100 and reports judge it only on a change larger than that.
COUNT_MODE = "request_count"


@dataclass(frozen=True)
class Window:
    """How one level is measured: perf_analyzer's time windows of `ms`, which must agree within
    `stability_percent`."""

    ms: int
    stability_percent: int

    def flags(self) -> list[str]:
        return ["--measurement-mode", MEASUREMENT_MODE, "--measurement-interval", str(self.ms),
                "--stability-percentage", str(self.stability_percent)]

    def describe(self) -> str:
        return f"{self.ms} ms windows"


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
            metrics_url: str | None = None, window: Window | None = None,
            request_count: int = 0) -> list[str]:
    """The exact perf_analyzer command line for one concurrency level.

    `window` overrides the settings' window (see `Window`); `request_count` > 0 sends that many
    requests and stops, with no stability windows (the probe).
    """
    input_data = opts.input_data or str(settings.PERF_INPUTS / "food_classifier_raw.json")
    window = window or Window(opts.measurement_ms, opts.stability_percent)
    cmd = [
        str(binary()), "-m", model, "-u", url, "-i", opts.protocol,
        "--concurrency-range", f"{concurrency}:{concurrency}",
        "-b", str(opts.batch_size),
        "--input-data", input_data,
    ]
    if request_count:
        cmd += ["--request-count", str(request_count)]
    else:
        cmd += window.flags() + ["--max-trials", str(opts.max_trials)]
    cmd += ["-f", str(csv_path)]
    if opts.collect_metrics and metrics_url:
        cmd += ["--collect-metrics", "--metrics-url", metrics_url]
    return cmd


def parse_csv(path: Path) -> pd.DataFrame:
    """perf_analyzer's CSV as a DataFrame with the course's column names, ordered by concurrency."""
    raw = pd.read_csv(path)
    df = raw.rename(columns={k: v for k, v in COLUMNS.items() if k in raw.columns})
    return df.sort_values("concurrency").reset_index(drop=True)


#: perf_analyzer's words for "no request finished inside a window": the window is too short.
NO_VALID_REQUESTS = re.compile(r"No valid requests recorded|use a larger time window")
UNSTABLE = "Failed to obtain stable measurement"


def request_count(output: str) -> int | None:
    """The client's request count perf_analyzer reports for the measured windows together."""
    found = re.findall(r"Client:\s*\n\s*Request count: (\d+)", output)
    return int(found[-1]) if found else None


def explain_failure(output: str, model: str, opts: PerfSettings,
                    window: Window | None = None) -> str:
    """What a failed perf_analyzer run means, and what to try."""
    window = window or Window(opts.measurement_ms, opts.stability_percent)
    if UNSTABLE in output:
        return ("throughput or latency kept changing by more than "
                f"{window.stability_percent}% between {window.describe()}. Try longer windows "
                "(measurement_ms, min_requests), fewer instances competing for the CPU, or "
                "stop other work on this machine.")
    if NO_VALID_REQUESTS.search(output):
        return (f"no request finished inside {window.describe()}, even after lengthening them: "
                "the model may be stalled; look at server.logs().")
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


def _run_perf(cmd: list[str], env: dict, workdir: Path, limit: float, server, model: str,
              level: int) -> subprocess.CompletedProcess:
    try:
        return run_perf_analyzer(cmd, env, workdir, limit)
    except subprocess.TimeoutExpired as exc:
        output = _text(exc.stdout) + _text(exc.stderr)
        raise PerfError(f"perf_analyzer did not finish within {limit:.0f} s at concurrency "
                        f"{level} for '{model}' and was stopped. {_server_state(server)}\n"
                        f"command: {' '.join(cmd)}\nlast lines:\n{_tail(output)}") from None


def probe(server, model: str, level: int, opts: PerfSettings, env: dict,
          workdir: Path) -> float | None:
    """Inferences per second `model` answers at concurrency `level`, from a few requests
    (perf_analyzer with --request-count: about one per client, at least 4, no windows); None
    if the probe failed (the measurement that follows then says why)."""
    csv_path = Path(f"probe_c{level}.csv")
    cmd = command(server.http_url if opts.protocol == "http" else server.grpc_url, model, level,
                  csv_path, opts, server.metrics_url, request_count=max(4, level))
    proc = _run_perf(cmd, env, workdir, 600, server, model, level)
    if proc.returncode != 0 or not (workdir / csv_path).exists():
        return None
    latency_s = parse_csv(workdir / csv_path).iloc[0][P50] / 1e6
    # Little's law: `level` requests in flight, each taking `latency_s`. (perf_analyzer's own
    # throughput figure counts whole seconds, so it is wrong for a run this short.)
    return level * opts.batch_size / latency_s if latency_s > 0 else None


def window_requests(opts: PerfSettings, group: int = 1, concurrency: int = 1) -> int:
    """Requests one window should hold: `min_requests`, at least three `group`s, and twice the
    `concurrency`. A model that batches dynamically answers the requests in flight together, up
    to `group` at a time (the concurrency, at most its max_batch_size): a window must span
    several such groups to count them steadily. With `concurrency` clients each waiting for its
    answer, a request takes about concurrency / throughput seconds: a window that holds twice
    the concurrency lasts about two such latencies, so the requests that straddle its edges do
    not decide its latency figures."""
    return max(opts.min_requests, 3 * group, 2 * concurrency)


def answer_group(server, model: str, concurrency: int) -> int:
    """How many answers can come back at once at `concurrency`, from the configs `server`
    serves (`group_of`); 1 when the server does not say."""
    config = server.model_config(model) or {}
    steps = config.get("ensemble_scheduling", {}).get("step", [])
    return group_of(config, {s.get("model_name", ""): server.model_config(s.get("model_name", ""))
                             or {} for s in steps}, concurrency)


def group_of(config: dict, steps: dict[str, dict], concurrency: int) -> int:
    """How many answers a model whose config is `config` (Triton's JSON form, as its
    /v2/models/<name>/config answers) can return at once at `concurrency`: up to its
    max_batch_size when it batches dynamically, 1 when it does not, and never more than the
    requests in flight. An ensemble answers when its last steps (those whose outputs no other
    step reads) have run, so its answers come back as those steps release them: the smallest
    group among them (`steps`: each step's config by model name). A batching classifier in
    front of a captioner that captions one image at a time still returns captions one by one."""
    scheduled = config.get("ensemble_scheduling", {}).get("step", [])
    if scheduled:
        read = {tensor for s in scheduled for tensor in s.get("input_map", {}).values()}
        last = [s for s in scheduled if not set(s.get("output_map", {}).values()) & read]
        answering = [steps.get(s.get("model_name", ""), {}) for s in last or scheduled]
    else:
        answering = [config]
    group = min(int(cfg.get("max_batch_size", 1) or 1) if "dynamic_batching" in cfg else 1
                for cfg in answering)
    return max(1, min(group, concurrency))


def plan_window(opts: PerfSettings, rate: float | None, group: int = 1,
                concurrency: int = 1) -> Window:
    """The window for a level expected to run at about `rate` infer/s: `measurement_ms`, or
    long enough for `window_requests` requests, with the tolerance so few requests, answered
    `group` at a time, allow (at least 300/requests %, and one group's share of a window; the
    requests counted there leave out the concurrency's share, which lengthens a window for its
    latency figures, not for its counts)."""
    window = Window(opts.measurement_ms, opts.stability_percent)
    if not opts.adapt_windows or not rate:
        return window
    requests = window_requests(opts, group, concurrency)
    needed = math.ceil(requests / rate * 1000 / 100) * 100
    if needed <= opts.measurement_ms:
        return window
    counted = window_requests(opts, group)
    tolerance = max(opts.stability_percent, math.ceil(300 / counted),
                    math.ceil(100 * group / counted) + 1)
    return Window(min(needed, opts.max_window_ms), tolerance)


def remedy(window: Window, output: str, few_requests: int | None, opts: PerfSettings,
           tried: int) -> tuple[Window, str] | None:
    """The next window after a measurement whose outcome means its windows were too short (no
    valid request; a success that rests on only `few_requests` requests; not stable), and the
    line that says so; None when nothing longer or looser is left to try."""
    longer = min(window.ms * 3, opts.max_window_ms)
    if NO_VALID_REQUESTS.search(output) or few_requests is not None:
        if longer == window.ms:
            return None
        why = ("no request finished inside a window" if few_requests is None else
               f"the measurement rests on only {few_requests} requests")
        return replace(window, ms=longer), f"{why}; measuring again with {longer} ms windows"
    if UNSTABLE not in output:
        return None
    if tried == 1 and window.stability_percent < 30:
        looser = replace(window, stability_percent=max(30, 2 * window.stability_percent))
        return looser, (f"not stable within {window.stability_percent}%; measuring again with "
                        f"{looser.stability_percent}%")
    if window.stability_percent >= 100 and longer == window.ms:
        return None
    looser = Window(longer, 100)
    return looser, (f"not stable within {window.stability_percent}%; measuring again with 100% "
                    f"and {looser.describe()} (numbers will be noisy: is something else using "
                    "this machine?)")


def batch_counts(server, model: str) -> dict[int, int] | None:
    """Executions per batch size Triton has counted for `model` since it was loaded (its
    statistics' batch_stats, over HTTP), summed over the server's `statistics_urls` (behind a
    load balancer, its replicas'); None when the statistics cannot be read."""
    from tritonclient.utils import InferenceServerException

    total: dict[int, int] = {}
    try:
        for url in server.statistics_urls:
            for size, n in clients.batch_size_counts(clients.model_stats(url, model)).items():
                total[size] = total.get(size, 0) + n
    except (InferenceServerException, OSError, KeyError, IndexError):
        return None
    return total


def _counted_between(before: dict[int, int], after: dict[int, int]) -> dict[int, int]:
    return {size: n - before.get(size, 0) for size, n in sorted(after.items())
            if n - before.get(size, 0) > 0}


def run(server, model: str, variant: str, opts: PerfSettings | None = None, notes: str = "",
        save: bool = True, sample_metrics: bool = True) -> PerfRun:
    """Measure `model` on `server` at each concurrency level; returns (and saves) a PerfRun.

    Each level is measured with windows fitted to the model's speed (see `PerfSettings`) and
    measured again, up to `max_attempts` times, when perf_analyzer's outcome means the windows
    were too short (no valid request, too few requests, not stable): looser tolerance, then
    longer windows, each step printed; a level that is not stable even then is measured once
    over a fixed count of requests (measurement_mode UNSTABLE_MODE, stability_percent 100).
    With `opts.stability_windows` off, every level is measured that way from the start, over
    `window_requests` requests and without a probe (measurement_mode COUNT_MODE).
    Every row records how it was measured (columns
    measurement_mode, measurement_ms, stability_percent, and request count: the requests the
    figures rest on). For an ensemble, `steps` holds one row per composing model and level
    (perf_analyzer's per-model CSVs), and the ensemble's server queue time is the sum of its
    steps' (the ensemble itself has no queue: perf_analyzer reports about 0 there).

    `phases` records when each level's probe and measurements ran, on the clock of the sampled
    metrics (also in `metrics.attrs['phases']`, for `plots.server_metrics`); `batch_counts`
    the executions per batch size Triton counted during each level (its model statistics read
    before and after the level; empty when they cannot be read).

    `server` may be a load balancer (serving.replicas.LoadBalancer): perf_analyzer then runs
    through nginx, `batch_counts` are its replicas' together, and no metrics are sampled (each
    replica has its own endpoint; measuring.replicas.split reads them).

    Raises PerfError (saying what happened and what to try) when Triton is not ready, goes
    away, or no attempt succeeds, or when the config Triton serves for `model` (asked of
    Triton, at the start and at the end) is not the one loaded here (`deploy.served_mismatch`);
    ServerBusyError when the server is another session's (`check_held`); nothing is saved
    then.
    """
    from tqdm.auto import tqdm

    opts = opts or PerfSettings.for_course([1, 8, 16])
    server.check_held()  # another session's Triton: measuring it would save its config's run
    if not server.is_ready():
        raise PerfError(f"Triton at {server.http_url} is not ready: start it (server.start()) "
                        "before measuring.")
    expected = deploy.expected_config(server, model)
    differs = deploy.served_mismatch(server, model, expected)
    if differs:
        raise PerfError(
            f"Not measured: Triton serves '{model}' with another config than the one loaded "
            f"here ({differs}). Was it reloaded from elsewhere, or config.pbtxt edited "
            "without a reload? Deploy the config again (the notebook's deploy cell), then "
            "measure.")
    url = server.http_url if opts.protocol == "http" else server.grpc_url
    env = environment()
    rows, raw, commands, step_rows = [], {}, [], []
    phases, counts = [], {}  # what ran when (see PerfRun.phases); batch sizes per level
    # A load balancer has no metrics endpoint of its own (each replica has one): no sampling.
    sampler = (MetricsSampler(server.metrics_url, model=model)
               if sample_metrics and server.metrics_url else None)
    workdir = Path(tempfile.mkdtemp(prefix="perf_"))
    rate = None  # infer/s at the last level measured (or probed)
    t0 = time.monotonic()  # the sampler's clock too

    def timed(level: int, phase: str, attempt: int, began: float) -> None:
        phases.append({"concurrency": level, "phase": phase, "attempt": attempt,
                       "start (s)": round(began - t0, 3),
                       "end (s)": round(time.monotonic() - t0, 3)})

    try:
        if sampler:
            sampler.start(t0)
        for level in tqdm(list(opts.concurrency), desc=f"perf_analyzer {variant}", unit="level"):
            counted_before = batch_counts(server, model)
            # A bare file name: for an ensemble perf_analyzer also writes one file per composing
            # model, named <model>_v<version>.<this name>, in its working folder.
            csv_path = Path(f"c{level}.csv")
            group = answer_group(server, model, level) if opts.adapt_windows else 1
            window = plan_window(opts, rate, group, level)
            def once(count: int, attempt: int, limit: float, level: int = level,
                     csv_path: Path = csv_path) -> tuple[list[str], str, bool]:
                """This level measured by one perf_analyzer run over `count` requests, with no
                stability windows: (command, output, whether it succeeded)."""
                cmd = command(url, model, level, csv_path, opts, server.metrics_url,
                              request_count=count)
                began = time.monotonic()
                proc = _run_perf(cmd, env, workdir, limit, server, model, level)
                timed(level, "measurement", attempt, began)
                return (cmd, proc.stdout + proc.stderr,
                        proc.returncode == 0 and (workdir / csv_path).exists())

            if not opts.stability_windows:
                count = window_requests(opts, group, level)
                log.info(f"concurrency {level}: measuring {count} requests once, without "
                         "stability windows (quick mode): read it as a rough figure.")
                # a generous limit: each of `count` requests may take minutes on a busy machine
                cmd, output, ok = once(count, 1, max(600.0, count * 60.0))
                if not ok:
                    raise PerfError(
                        f"perf_analyzer failed at concurrency {level} for '{model}': "
                        + (_server_state(server) or explain_failure(output, model, opts, window))
                        + f"\ncommand: {' '.join(cmd)}\nlast lines:\n{_tail(output)}")
                measured, mode = request_count(output), COUNT_MODE
            elif opts.adapt_windows and (rate is None or window.ms > opts.measurement_ms):
                # First level, or a slow model: ask the model itself how fast it answers here.
                began = time.monotonic()
                rate = probe(server, model, level, opts, env, workdir) or rate
                if plan_window(opts, rate, group, level).ms > opts.measurement_ms:
                    # Slow, or slowed for a moment by other work on the machine: ask once more
                    # and keep the faster answer (a passing stall only ever slows a probe).
                    again = probe(server, model, level, opts, env, workdir)
                    rate = max(rate or 0.0, again or 0.0) or None
                timed(level, "probe", 1, began)
                window = plan_window(opts, rate, group, level)
                if window.ms > opts.measurement_ms:
                    count = window_requests(opts, group, level)
                    log.info(f"concurrency {level}: about {rate:.2f} infer/s, so {window.ms} ms "
                             f"windows (about {count} requests each), within "
                             f"{window.stability_percent}%.")
            if opts.stability_windows:
                mode = MEASUREMENT_MODE
                for attempt in range(1, opts.max_attempts + 1):
                    cmd = command(url, model, level, csv_path, opts, server.metrics_url, window)
                    limit = max(180.0, window.ms / 1000 * (opts.max_trials + 4) * 3)
                    began = time.monotonic()
                    proc = _run_perf(cmd, env, workdir, limit, server, model, level)
                    timed(level, "measurement", attempt, began)
                    output = proc.stdout + proc.stderr
                    ok = proc.returncode == 0 and (workdir / csv_path).exists()
                    measured = request_count(output) if ok else None
                    few = (ok and opts.adapt_windows and measured is not None
                           and measured < opts.min_requests)
                    if ok and not few:
                        break
                    gone = _server_state(server)
                    step = None if gone or attempt == opts.max_attempts else remedy(
                        window, output, measured if few else None, opts, attempt)
                    if step is None:
                        if ok:  # few requests, and nothing longer to try: keep it, and say so
                            log.info(f"concurrency {level}: the measurement rests on only "
                                     f"{measured} requests: read it as a rough figure.")
                            break
                        if not gone and UNSTABLE in output:
                            # Even the loosest windows disagreed (an oversubscribed config can do
                            # that on purpose): measure once, without stability windows.
                            count = 3 * window_requests(opts, group, level)
                            log.info(f"concurrency {level}: not stable even within "
                                     f"{window.stability_percent}%; measuring {count} requests "
                                     "once, without stability windows: read it as a rough "
                                     "figure.")
                            cmd, output, ok = once(count, attempt + 1, limit)
                            if ok:
                                measured, mode = request_count(output), UNSTABLE_MODE
                                break
                        raise PerfError(
                            f"perf_analyzer failed at concurrency {level} for '{model}'"
                            + (f" after {attempt} attempts" if attempt > 1 else "") + ": "
                            + (gone or explain_failure(output, model, opts, window)) + "\n"
                            f"command: {' '.join(cmd)}\nlast lines:\n{_tail(output)}")
                    window, why = step
                    log.info(f"concurrency {level}: {why}.")
            commands.append(cmd)
            raw[level] = output
            row = parse_csv(workdir / csv_path).iloc[0].to_dict()
            row["measurement_mode"] = mode
            row["measurement_ms"] = window.ms
            row["stability_percent"] = (window.stability_percent if mode == MEASUREMENT_MODE
                                        else max(100, window.stability_percent))
            row["request count"] = measured
            rows.append(row)
            rate = row[THROUGHPUT] or rate
            level_steps = []
            for step_file in sorted(workdir.glob(f"*.{csv_path.name}")):
                step_row = parse_csv(step_file).iloc[0].to_dict()
                step_row["step"] = step_file.name.split(".")[0].rsplit("_v", 1)[0]
                step_row["concurrency"] = level
                level_steps.append(step_row)
            if level_steps:
                # An ensemble has no queue of its own (perf_analyzer reports about 0): a request
                # waits in its steps' queues, one after the other, so its queue time is theirs.
                row["server queue (us)"] = sum(r["server queue (us)"] for r in level_steps)
            step_rows += level_steps
            counted_after = batch_counts(server, model) if counted_before is not None else None
            if counted_after is not None:
                counts[level] = _counted_between(counted_before, counted_after)
    finally:
        if sampler:
            sampler.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    differs = deploy.served_mismatch(server, model, expected)
    if differs:
        raise PerfError(
            f"Measured, but not saved as '{variant}': Triton's config of '{model}' changed "
            f"during the run ({differs}), so the figures mix two configs. Another session "
            "reloaded it: measure again once only this notebook uses the server.")
    df = pd.DataFrame(rows).sort_values("concurrency").reset_index(drop=True)
    df.insert(0, "variant", variant)
    df["concurrency"] = df["concurrency"].astype(int)
    meta = describe_run(server, model, variant, opts, commands, notes)
    metrics = sampler.frame() if sampler else pd.DataFrame()
    metrics.attrs["phases"] = phases
    steps = pd.DataFrame(step_rows)
    if not steps.empty:
        steps.insert(0, "variant", variant)
    result = PerfRun(df=df, meta=meta, raw=raw, metrics=metrics, steps=steps,
                     phases=pd.DataFrame(phases, columns=results.PHASE_COLUMNS),
                     batch_counts=counts if any(counts.values()) else {})
    if save:
        result.path = results.save_run(result)
    return result


def _gpu_config_on_cpu(server, model: str, device: str) -> bool:
    """Whether the model's config.pbtxt asks for GPU instances while Triton ran it on the CPU
    (`configs.for_this_machine` loads a GPU config's CPU copy where there are no GPUs)."""
    try:
        written = configs.read_config(Path(server.model_repository) / model)
    except (OSError, ValueError):
        return False
    gpu = configs.mc.ModelInstanceGroup.KIND_GPU
    return any(g.kind == gpu for g in written.instance_group) and "GPU" not in device


def describe_run(server, model: str, variant: str, opts: PerfSettings, commands: list[list[str]],
                 notes: str = "") -> dict:
    """What was measured, where and how: saved with every run."""
    config = server.model_config(model)
    device = devices.describe(config)
    return {
        "variant": variant,
        "model": model,
        "mode": server.mode,
        "device": device,
        "gpu_config_on_cpu": _gpu_config_on_cpu(server, model, device),
        "machine": devices.machine(),
        "server_version": server.version(),
        "config": config,
        "concurrency": list(opts.concurrency),
        "measurement_ms": opts.measurement_ms,
        "min_requests": opts.min_requests,
        "adapt_windows": opts.adapt_windows,
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


def baseline(server, opts: PerfSettings, variant: str = "baseline") -> pd.DataFrame:
    """The baseline's latest saved run if its file exists (notebook 02), else measured now
    with the config notebook 02 measures (the classifier alone, every core)."""
    saved = results.latest(variant)
    if saved is not None:
        df, path = saved
        log.info(f"{variant}: using the run saved in {path} (from notebook 02).")
        return df
    log.info(f"{variant}: no saved run found; measuring it now.")
    deploy.deploy(server, configs.classifier_config())
    return run(server, "food_classifier", variant, opts).df
