"""Triton Model Analyzer from a cell: its automatic config search on the course's classifier, run
on the embedded tritonserver (CPU only) here and on the GPUs on the GPU node, its results read
into the course's results table.

Model Analyzer (`model-analyzer profile`) starts its own Triton (launch mode `local`: the same
`tritonserver` binary the course runs), writes one variant of the model's config at a time
(instance count, dynamic batching, max_batch_size), loads it, measures it with perf_analyzer at
a few concurrency levels, and climbs towards the best throughput (its `quick` search) or tries
them all (`brute`). It lives in its own virtual environment, `.venv-analyzer/` (made by `make
install` from requirements/model-analyzer.txt): it needs a newer tritonclient than the course
pins, and the release that matches server 2.51 (1.45.0) is not on the package index; 1.46.0 ran
here against it.

On the GPU node the same search runs inside compose.yaml's `triton` container (`Launch.gpu_node`):
a Triton it launches must see the GPUs, and there, not in the Jupyter container, are the GPUs
and a tritonserver. Dockerfile.triton installs Model Analyzer there, in a virtual environment of
its own, and the course folder is mounted at the same path in both containers, so the files
written on one side are read on the other. Its search then varies GPU instance counts (per GPU).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import yaml

from .. import settings
from ..common import atomic_write, log
from ..serving import configs, devices
from ..serving.embedded import EmbeddedTriton
from ..settings import TritonAddress
from . import perf, results

#: Where `make install` puts Model Analyzer (TRITONLAB_MODEL_ANALYZER names another binary).
VENV = settings.ROOT / ".venv-analyzer"

#: The variant name every configuration Model Analyzer measured gets in the course's results
#: table, followed by its own config name ('food_classifier_config_3').
VARIANT_PREFIX = "Model Analyzer: "

#: Model Analyzer's result fields the course reads (its `inference_output_fields`), each with
#: the header its CSV gives it (its record types' header(), read from model_analyzer 1.46.0's
#: own code) and the course's column for it.
FIELDS = {
    "model_name": ("Model", "model"), "batch_size": ("Batch", "batch size"),
    "concurrency": ("Concurrency", "concurrency"),
    "model_config_path": ("Model Config Path", "config name"),
    "instance_group": ("Instance Group", "instance group"),
    "max_batch_size": ("Max Batch Size", "max batch size"),
    "satisfies_constraints": ("Satisfies Constraints", "satisfies constraints"),
    "perf_throughput": ("Throughput (infer/sec)", results.THROUGHPUT),
    "perf_latency_p95": ("p95 Latency (ms)", "p95 latency (ms)"),
    "perf_latency_p99": ("p99 Latency (ms)", "p99 latency (ms)"),
    "perf_server_queue": ("Server Queue time (ms)", "server queue (ms)"),
    "perf_server_compute_infer": ("Server Compute Infer time (ms)", "server compute infer (ms)"),
}


#: Two throughputs closer than this share are not ranked (perf_analyzer's default stability
#: tolerance: windows of one config may differ by 10 %).
SAME_WITHIN = 0.10


#: The p95 latency (ms) a configuration must keep to be Model Analyzer's best (its
#: `constraints`), and at which notebook 09 and `make bench` compare it with the hand-tuned best.
P95_BUDGET_MS = 50.0


class AnalyzerError(RuntimeError):
    """Model Analyzer is missing, or its run failed: the message says what to do."""


def binary() -> Path:
    """The `model-analyzer` command. Raises AnalyzerError when it is not installed."""
    named = os.environ.get("TRITONLAB_MODEL_ANALYZER")
    path = Path(named) if named else VENV / "bin" / "model-analyzer"
    if not path.exists():
        raise AnalyzerError(f"Model Analyzer is not installed ({path} is missing): run "
                            "`make install`, which makes .venv-analyzer/ from "
                            "requirements/model-analyzer.txt.")
    return path


@dataclass
class SearchSettings:
    """How widely Model Analyzer searches, and how long it measures each point.

    Limits are Model Analyzer's own `run_config_search_*` options; `measurement_ms` is
    perf_analyzer's window; `p95_budget_ms` is the latency the best configuration must keep
    (Model Analyzer's `constraints`), also the budget the comparison uses."""

    mode: str = "quick"               # Model Analyzer's run_config_search_mode: quick or brute
    max_concurrency: int = 16
    max_instance_count: int = 3
    max_model_batch_size: int = 16
    measurement_ms: int = 3000
    p95_budget_ms: float = P95_BUDGET_MS
    runtimes: list[str] = field(default_factory=lambda: ["onnxruntime", "torch"])
    # after the search, Model Analyzer measures its best configurations at every concurrency
    # up to the limit, for its reports (about a minute here): off in quick mode
    concurrency_sweep: bool = True

    @classmethod
    def for_course(cls, **kw) -> SearchSettings:
        """Full mode: quick search up to concurrency 16, 3 instances, max batch 16, both
        runtimes. Quick mode (tests, `make lab`): up to concurrency 4, 2 instances, max batch
        4, 1 s windows, ONNX Runtime only, no concurrency sweep after the search (about two
        minutes instead of tens)."""
        if settings.quick_mode():
            for key, value in dict(max_concurrency=4, max_instance_count=2,
                                   max_model_batch_size=4, measurement_ms=1000,
                                   runtimes=["onnxruntime"], concurrency_sweep=False).items():
                kw.setdefault(key, value)
        return cls(**kw)


def search_limit_s(quick: bool | None = None) -> int:
    """Seconds one runtime's search may take before it is stopped (`search` runs one per
    runtime): 30 minutes in quick mode, 2 hours in a full run (default: this run's mode)."""
    quick = settings.quick_mode() if quick is None else quick
    return 1800 if quick else 7200


def stall_limit_s(quick: bool | None = None) -> int:
    """Seconds Model Analyzer may run without starting a new measurement before the course stops
    it (`search`), at the least: 1 minute in quick mode (one measurement, its Triton's reload
    included, took 12 to 27 s here), 15 in a full run; a search whose measurements come slower
    gets STALL_FACTOR times the longest gap it has shown (`_StallGuard`). Model Analyzer 1.46's
    quick search can step back and forth between configurations it has already measured
    without ever ending (its own code: "TODO: TMA-871: handle back-off (and its termination)
    better"), as it did here once a neighbour broke the p95 budget, and in a run of `.ci/run` here
    on 2026-12-07 (notebook 09: six measurements 12 to 14 s apart, then none). When it does so
    printing its "No changes made" line over and over, it is stopped at once (LOOP_REPEATS)."""
    quick = settings.quick_mode() if quick is None else quick
    return 60 if quick else 900


#: A search may go this many times its longest gap between two measurements without a new one.
STALL_FACTOR = 4
#: Model Analyzer's back-off loop (TMA-871) shows itself at once: "No changes made to analyzer
#: data" printed over and over (13,584 times in 70 s here, each after "Existing measurement
#: found for run config. Skipping profile") with no new configuration or measurement between.
#: A search that works prints it once or twice after a measurement that did not improve.
LOOP_REPEATS = 20
#: What Model Analyzer's log lines begin (one measurement, one configuration) or say (the search
#: moved nowhere); the stall guard reads them, and they are among the lines shown while it runs.
MEASUREMENT, NEW_CONFIG, UNCHANGED = "Profiling ", "Creating model config", "No changes made"


#: Inside the GPU node's Triton image (Dockerfile.triton): Model Analyzer's virtual environment,
#: the image's own tritonserver, the perf_analyzer of tritonclient 2.51.0 (a pin of
#: requirements/triton-image.txt: newer wheels need glibc 2.38, the image has 2.35; pip puts
#: its programs in /usr/local/bin), and where the image's Python keeps the CUDA runtime that
#: perf_analyzer links (torch's nvidia-cuda-runtime-cu12).
IMAGE_ANALYZER = "/opt/model-analyzer/bin/model-analyzer"
IMAGE_SERVER = "/opt/tritonserver/bin/tritonserver"
IMAGE_PERF_ANALYZER = "/usr/local/bin/perf_analyzer"
IMAGE_CUDA_RUNTIME = "/usr/local/lib/python3.10/dist-packages/nvidia/cuda_runtime/lib"


@dataclass(frozen=True)
class Launch:
    """Where Model Analyzer runs, and the Triton and perf_analyzer it starts (its launch mode is
    `local` in both places: it starts a tritonserver of its own, next to it).

    `here(backend_dir)`: this machine, the embedded tritonserver on the CPU (`cpu_only`).
    `gpu_node()`: inside compose.yaml's `triton` container, through `docker exec`; the image's
    tritonserver on every GPU the container sees, so the search varies GPU instance counts."""

    where: str                      # 'here' or 'the triton container'
    command: tuple[str, ...]        # what runs `model-analyzer`, before `profile -f <file>`
    server: str                     # the tritonserver it launches
    perf_analyzer: str
    server_flags: dict[str, str]    # besides those profile_config always sets
    server_environment: dict[str, str]
    gpus: bool                      # search GPU instances (else cpu_only, no GPUs)

    @classmethod
    def here(cls, backend_dir: Path) -> Launch:
        env = environment()
        return cls(where="here", command=(str(binary()),),
                   server=str(EmbeddedTriton().binary()), perf_analyzer=str(perf.binary()),
                   server_flags={"backend-directory": str(backend_dir)},
                   server_environment={key: env[key] for key in
                                       ("LD_LIBRARY_PATH", "PATH", "PYTHONPATH") if key in env},
                   gpus=False)

    @classmethod
    def gpu_node(cls, container: str = "triton", docker: str = "docker",
                 limit_s: int = 7200) -> Launch:
        """Model Analyzer in the `container` of compose.yaml. `timeout` (in the container) stops
        it after `limit_s` seconds: stopping `docker exec` here would leave it running there.
        The image's own LD_LIBRARY_PATH is kept, perf_analyzer's CUDA runtime added to it."""
        run = (f'LD_LIBRARY_PATH="$LD_LIBRARY_PATH:{IMAGE_CUDA_RUNTIME}" exec timeout '
               f'--signal=INT --kill-after=60 {limit_s} {IMAGE_ANALYZER} "$@"')
        return cls(where=f"the {container} container", command=(
            docker, "exec", container, "sh", "-c", run, "model-analyzer"),
            server=IMAGE_SERVER, perf_analyzer=IMAGE_PERF_ANALYZER, server_flags={},
            server_environment={}, gpus=True)

    def interrupt(self, proc: subprocess.Popen, sig: int = signal.SIGINT) -> None:
        """`sig` to Model Analyzer (`proc`, started in a session of its own): on SIGINT it saves
        its checkpoint and exits. In the Triton container the signal is sent there (`docker
        exec` does not pass signals on), to every process running IMAGE_ANALYZER."""
        if self.where == "here":
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            return
        find = ("import os, signal\n"
                "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
                "    try:\n"
                f"        if {IMAGE_ANALYZER!r}.encode() in open(f'/proc/{{pid}}/cmdline', 'rb')"
                ".read().split(b'\\0')[:2]:\n"
                f"            os.kill(int(pid), {int(sig)})\n"
                "    except OSError:\n"
                "        pass\n")
        docker, _, container = self.command[:3]
        subprocess.run([docker, "exec", container, "python3", "-c", find],
                       capture_output=True, timeout=60)

    @classmethod
    def for_this_machine(cls, state_dir: Path, limit_s: int = 7200) -> Launch:
        """`gpu_node()` where the course drives Triton in Docker (TRITONLAB_MODE=docker, the GPU
        node), else `here()` with a backend folder made in `state_dir`."""
        from ..serving import choose_mode

        if choose_mode()[0] == "docker":
            return cls.gpu_node(limit_s=limit_s)
        return cls.here(EmbeddedTriton(state_dir=state_dir)._backend_dir())


def base_config(runtime: str) -> configs.mc.ModelConfig:
    """The classifier config a search starts from: one instance, no batching, every core
    (the classifier alone on the machine), the given runtime. Model Analyzer varies its
    instance count, dynamic batching and max_batch_size."""
    return configs.classifier_config(runtime=runtime, instances=1, cpu_share=1.0)


def environment() -> dict[str, str]:
    """What Model Analyzer, its Triton and its perf_analyzer need: the embedded server's
    libraries and the course's Python first on PATH (the backend stub takes its python3 from
    there), and perf_analyzer's libraries."""
    server = EmbeddedTriton()
    env = server._environment()
    pa = perf.environment()
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (env.get("LD_LIBRARY_PATH", ""),
                                                  pa.get("LD_LIBRARY_PATH", "")) if p)
    return env


def profile_config(repository: Path, output: Path, opts: SearchSettings,
                   address: TritonAddress, launch: Launch,
                   model: str = "food_classifier") -> dict:
    """Model Analyzer's `profile` config for `model` in `repository`: launch mode local, the
    Triton and perf_analyzer of `launch` bound to 127.0.0.1 on `address`'s ports, CPU only
    unless `launch.gpus` (then every GPU it sees, and instance groups of KIND_GPU), the course's
    perf input file, results under `output`."""
    return {
        "model_repository": str(repository),
        "output_model_repository_path": str(output / "output_models"),
        "override_output_model_repository": True,
        "export_path": str(output),
        "checkpoint_directory": str(output / "checkpoints"),
        "triton_launch_mode": "local",
        "triton_server_path": launch.server,
        "triton_output_path": str(output / "tritonserver.log"),
        "perf_analyzer_path": launch.perf_analyzer,
        "perf_output": False,
        # the protocol of the course's own perf runs (perf.PerfSettings.protocol): Model
        # Analyzer's default is gRPC, and a comparison of the two must not also compare protocols
        "client_protocol": perf.PerfSettings().protocol,
        "perf_analyzer_flags": {
            "input-data": str(settings.PERF_INPUTS / "food_classifier_raw.json"),
            "measurement-interval": opts.measurement_ms,
        },
        "triton_http_endpoint": f"127.0.0.1:{address.http}",
        "triton_grpc_endpoint": f"127.0.0.1:{address.grpc}",
        "triton_metrics_url": f"http://127.0.0.1:{address.metrics}/metrics",
        "triton_server_flags": {
            **launch.server_flags, "http-address": "127.0.0.1",
            "grpc-address": "127.0.0.1", "metrics-address": "127.0.0.1",
            "exit-on-error": "false",
        },
        "triton_server_environment": dict(launch.server_environment),
        # every GPU it sees (also Model Analyzer's default, which an empty list gives too:
        # `cpu_only` is what keeps a search on the CPU)
        "gpus": ["all"],
        "run_config_search_mode": opts.mode,
        "run_config_search_max_concurrency": opts.max_concurrency,
        "run_config_search_max_instance_count": opts.max_instance_count,
        "run_config_search_max_model_batch_size": opts.max_model_batch_size,
        "profile_models": {model: {"cpu_only": not launch.gpus}},
        "objectives": {"perf_throughput": 10},
        "constraints": {"perf_latency_p95": {"max": opts.p95_budget_ms}},
        "inference_output_fields": list(FIELDS),
        "skip_detailed_reports": True,
        "concurrency_sweep_disable": not opts.concurrency_sweep,
    }


@dataclass
class Search:
    """What one Model Analyzer search measured.

    `points`: one row per configuration and concurrency level Model Analyzer measured, in the
    course's columns (variant, runtime, config name, instances, max batch size, dynamic
    batching, concurrency, throughput, p95/p99 latency, server queue and compute, in ms where
    the name says so). `configs`: each configuration Model Analyzer wrote, by variant name."""

    points: pd.DataFrame
    configs: dict[str, object]
    settings: SearchSettings
    seconds: float

def variant_name(config_name: str, runtime: str) -> str:
    """The course's variant name for one configuration Model Analyzer measured."""
    return f"{VARIANT_PREFIX}{config_name} ({runtime})"


def read_results(folder: Path, runtime: str) -> pd.DataFrame:
    """Model Analyzer's inference results (`<folder>/results/metrics-model-inference.csv`) in
    the course's columns (FIELDS), one row per configuration and concurrency level, with the
    runtime and variant name. Raises AnalyzerError when the file is missing (the run's log
    says why)."""
    path = folder / "results" / "metrics-model-inference.csv"
    if not path.exists():
        raise AnalyzerError(f"Model Analyzer wrote no results ({path} is missing): see its log "
                            "above, and its Triton's log in " + str(folder / "tritonserver.log"))
    raw = pd.read_csv(path)
    df = raw.rename(columns={header: column for header, column in FIELDS.values()
                             if header in raw.columns})
    df["runtime"] = runtime
    df["variant"] = [variant_name(name, runtime) for name in df["config name"]]
    return df.sort_values(["config name", "concurrency"]).reset_index(drop=True)


def read_checkpoint(folder: Path, runtime: str, budget_ms: float) -> pd.DataFrame:
    """What Model Analyzer measured, read from its checkpoint (`<folder>/checkpoints/*.ckpt`,
    which it saves after every measurement) in the same rows and columns as `read_results`
    (values rounded as its CSV rounds them; 'satisfies constraints' from `budget_ms`): for a
    run stopped before it wrote its CSV. Raises AnalyzerError when there is no checkpoint or it
    holds no measurement."""
    found = sorted((folder / "checkpoints").glob("*.ckpt"),
                   key=lambda p: int(p.stem) if p.stem.isdigit() else -1)
    if not found:
        raise AnalyzerError(f"Model Analyzer left no checkpoint in {folder / 'checkpoints'}")
    saved = json.loads(found[-1].read_text())["ResultManager.results"]["_results"]
    rows = []
    for model, variants in saved.items():
        for name, (run_config, measurements) in variants.items():
            cfg = run_config["_model_run_configs"][0]["_model_config_variant"]["model_config"]
            groups = ",".join(f"{g.get('count', 1)}:{g.get('kind', 'KIND_AUTO')[5:]}"
                              for g in cfg.get("instanceGroup", []))
            for measurement in measurements.values():
                part = measurement["_model_config_measurements"][0]
                value = {key: record["_value"] for key, record in part["_non_gpu_data"]}
                pa = part["_model_specific_pa_params"]
                p95 = round(value["perf_latency_p95"], 1)
                rows.append({"model": model, "batch size": pa.get("batch-size", 1),
                             "concurrency": pa["concurrency-range"], "config name": name,
                             "instance group": groups,
                             "max batch size": cfg.get("maxBatchSize", 0),
                             "satisfies constraints": "Yes" if p95 <= budget_ms else "No",
                             results.THROUGHPUT: round(value["perf_throughput"], 1),
                             "p95 latency (ms)": p95,
                             "p99 latency (ms)": round(value["perf_latency_p99"], 1),
                             "server queue (ms)": round(value["perf_server_queue"], 1),
                             "server compute infer (ms)":
                                 round(value["perf_server_compute_infer"], 1)})
    if not rows:
        raise AnalyzerError(f"Model Analyzer's checkpoint {found[-1]} holds no measurement")
    df = pd.DataFrame(rows)
    df["runtime"] = runtime
    df["variant"] = [variant_name(name, runtime) for name in df["config name"]]
    return df.sort_values(["config name", "concurrency"]).reset_index(drop=True)


def _progress_line(line: str) -> str | None:
    """The part of a Model Analyzer log line worth showing while it runs (None: not shown)."""
    for key in (MEASUREMENT, NEW_CONFIG, UNCHANGED, "Done with quick", "Done gathering",
                "Exported", "ERROR", "WARNING"):
        if key in line:
            return line.split("] ", 1)[-1].strip() if "] " in line else line.strip()
    return None


class _Shown:
    """Prints the progress lines; a line repeated (its back-off loop repeats one endlessly) is
    printed once, then how many more times it came."""

    def __init__(self, runtime: str) -> None:
        self.runtime, self.start = runtime, time.monotonic()
        self.last, self.repeats = None, 0

    def line(self, shown: str) -> None:
        if shown == self.last:
            self.repeats += 1
            return
        self.end_repeats()
        self.last = shown
        print(f"[{time.monotonic() - self.start:5.0f} s] {self.runtime}: {shown}", flush=True)

    def end_repeats(self) -> None:
        if self.repeats:
            print(f"        (the line above {self.repeats} more times)", flush=True)
        self.repeats = 0


class _StallGuard:
    """Interrupts Model Analyzer (`launch.interrupt`) when `limit()` seconds pass without
    `progress()` (a new measurement): `seconds` (see `stall_limit_s`) or STALL_FACTOR times the
    longest gap between two measurements so far, whichever is longer, so a slow model is given
    time in proportion; or at once when `line` has seen its back-off loop (LOOP_REPEATS "No
    changes made" lines in a row). Kills it if it is still there `grace` seconds later (a SIGINT
    its parent ignores never reaches it: background jobs of a shell start so). `fired` says
    whether it did, `looping` whether the loop was seen. `clock` gives seconds (a test's own
    clock in place of time.monotonic)."""

    grace = 30

    def __init__(self, proc: subprocess.Popen, launch: Launch, seconds: int,
                 clock=time.monotonic) -> None:
        self.proc, self.launch, self.seconds, self.clock = proc, launch, seconds, clock
        self.fired = self.looping = False
        self._last = clock()
        self._longest = 0.0
        self._unchanged = 0  # "No changes made" lines since Model Analyzer last did something
        self._done = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def progress(self) -> None:
        now = self.clock()
        self._longest = max(self._longest, now - self._last)
        self._last = now

    def line(self, text: str) -> None:
        """One line of Model Analyzer's output."""
        if MEASUREMENT in text:
            self.progress()
        if MEASUREMENT in text or NEW_CONFIG in text:
            self._unchanged = 0
        elif UNCHANGED in text:  # in the loop it alternates with "Existing measurement
            self._unchanged += 1         # found for run config. Skipping profile"
            self.looping = self.looping or self._unchanged >= LOOP_REPEATS

    def limit(self) -> float:
        return max(self.seconds, STALL_FACTOR * self._longest)

    def stop(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(1):
            if self.proc.poll() is None and (
                    self.looping or self.clock() - self._last > self.limit()):
                self.fired = True
                self.launch.interrupt(self.proc)
                if self._done.wait(self.grace) or self.proc.poll() is not None:
                    return
                self.launch.interrupt(self.proc, signal.SIGKILL)
                return


def search(opts: SearchSettings | None = None, model: str = "food_classifier",
           folder: Path | None = None, progress: bool = True) -> Search:
    """Run Model Analyzer's search on `model`, once per runtime in `opts.runtimes`, each on a
    fresh copy of the model, and read what it measured.

    Each run starts its own Triton on free ports of 127.0.0.1 (Model Analyzer stops it when
    done), so a course server may keep running meanwhile; they share the cores (and the GPUs).
    Here that is the embedded tritonserver on the CPU; on the GPU node Model Analyzer runs in
    the Triton container and searches GPU instances (`Launch.for_this_machine`). Prints what
    Model Analyzer is profiling as it goes. Raises AnalyzerError when Model Analyzer is
    missing, fails, or runs past its time limit (its last lines and log files named)."""
    from ..assets import onnx_export
    from ..assets.repository import copy_repository
    from ..serving import choose_mode

    opts = opts or SearchSettings.for_course()
    if choose_mode()[0] != "docker":
        binary()  # installed here? (on the GPU node it is in the Triton image)
    else:
        # it runs inside the Triton container (`docker exec`), which the notebook before this
        # one stopped at its end (found by `make node-check`)
        from ..serving import get_server

        server = get_server()
        if not server.is_running():
            log.info("Model Analyzer runs in the Triton container, which is stopped: starting "
                     f"it ({server.start():.0f} s)")
    limit = search_limit_s()
    folder = Path(folder or settings.output_dir() / "model-analyzer")
    frames, found = [], {}
    began = time.monotonic()
    for runtime in opts.runtimes:
        work = folder / runtime
        shutil.rmtree(work, ignore_errors=True)
        repo = copy_repository(work / "repository", names=(model,))
        configs.write_config(base_config(runtime), repo, source="tritonlab.measuring.analyzer",
                             regenerate="analyzer.search()")
        if runtime == "onnxruntime":
            onnx_export.export_onnx(repo / model / "1")
        launch = Launch.for_this_machine(work / "state", limit_s=limit)
        config = profile_config(repo, work / "export", opts, TritonAddress.free(), launch,
                                model)
        (work / "export").mkdir(parents=True, exist_ok=True)  # Model Analyzer wants it there
        config_file = work / "profile.yaml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        cmd = [*launch.command, "profile", "-f", str(config_file)]
        log.info(f"Model Analyzer ({runtime}, in {launch.where}): {' '.join(cmd)}")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=environment(), cwd=work,
                                start_new_session=True)
        # stops it even when it prints nothing (in the container, `timeout` does it first)
        watchdog = threading.Timer(limit + 120, proc.kill)
        watchdog.start()
        began, lines = time.monotonic(), []
        stalled = _StallGuard(proc, launch, stall_limit_s())
        assert proc.stdout is not None
        shown = _Shown(runtime)
        try:
            for line in proc.stdout:
                lines.append(line.rstrip())
                stalled.line(line)
                if progress and (text := _progress_line(line)):
                    shown.line(text)
            code = proc.wait()
        finally:
            watchdog.cancel()
            stalled.stop()
        shown.end_repeats()
        if stalled.fired:
            frame = read_checkpoint(work / "export", runtime, opts.p95_budget_ms)
            why = (f"printed 'No changes made' {LOOP_REPEATS} times in a row" if stalled.looping
                   else f"made no new measurement in {stalled.limit():.0f} s")
            log.info(f"Model Analyzer ({runtime}) {why}: its quick search was stepping between "
                     f"configurations it had measured (Model Analyzer 1.46: TMA-871), so it was "
                     f"stopped; its {len(frame)} measurements are read from its checkpoint.")
        elif code != 0:
            tail = "\n".join(lines[-15:])
            # -9: the watchdog here; 124: `timeout` in the Triton container
            late = f" (stopped after its limit of {limit} s)" if code in (-9, 124) else ""
            raise AnalyzerError(f"Model Analyzer ({runtime}) exited with {code}{late} after "
                                f"{time.monotonic() - began:.0f} s; its last lines:\n{tail}\n"
                                f"Its Triton's log: {work / 'export' / 'tritonserver.log'}")
        else:
            frame = read_results(work / "export", runtime)
        written = {}  # each configuration Model Analyzer wrote, read once
        for name in frame["config name"].unique():
            path = work / "export" / "output_models" / name / "config.pbtxt"
            if path.exists():
                written[name] = configs.read_config(path)
        frame["dynamic batching"] = [name in written and written[name].HasField(
            "dynamic_batching") for name in frame["config name"]]
        frames.append(frame)
        found.update({variant_name(name, runtime): cfg for name, cfg in written.items()})
    points = pd.concat(frames, ignore_index=True)
    return Search(points=points, configs=found, settings=opts,
                  seconds=time.monotonic() - began)


def best_within(points: pd.DataFrame, budget_ms: float) -> pd.Series | None:
    """The row with the highest throughput whose p95 latency is at most `budget_ms` (rows in
    the course's columns, p95 in 'p95 latency (ms)'); None when no row keeps the budget."""
    kept = points[points["p95 latency (ms)"] <= budget_ms]
    if kept.empty:
        return None
    return kept.loc[kept[results.THROUGHPUT].idxmax()]


def hand_tuned(folder: Path | None = None) -> pd.DataFrame:
    """The classifier's hand-tuned variants of this course run (`results.course_run` of the
    saved runs), each level with its p95 in ms. Left out: Model Analyzer's own rows, and runs
    of a config with the response cache on (perf_analyzer's repeated inputs were answered from
    the cache: notebook 08). Raises ValueError when the baseline was never measured."""
    runs = [d for d in results.load_runs(folder)
            if not d["meta"]["variant"].startswith(VARIANT_PREFIX)
            and not (d["meta"].get("config") or {}).get("response_cache", {}).get("enable")]
    table = results.table(runs=runs)
    if table.empty:
        raise ValueError("no 'baseline' run of food_classifier saved: run notebook 02 first.")
    run = results.course_run(table).copy()
    run["p95 latency (ms)"] = run[results.P95] / 1000
    saved = {Path(d["path"]).name: d["meta"].get("config") for d in runs}
    run["config"] = [saved.get(name) for name in run["file"]]
    return run.reset_index(drop=True)


def knobs(cfg, cores: int | None = None) -> dict[str, str]:
    """What a classifier config sets among the things the search and the hand-tuning vary, in
    words: runtime, instances, threads per instance, max_batch_size, dynamic batching (with its
    max_queue_delay). `cfg` is a ModelConfig or the dict a saved run keeps (`json_format`'s).
    Threads per instance follow model.py's rule (backend_helpers.cpu_threads): `num_threads`
    when set, else `cpu_share` of `cores` (this machine's usable cores) split between the
    instances, at least one each."""
    from google.protobuf import json_format

    if not isinstance(cfg, dict):
        cfg = json_format.MessageToDict(cfg, preserving_proto_field_name=True)
    params = {key: (value or {}).get("string_value", "")
              for key, value in (cfg.get("parameters") or {}).items()}
    instances = sum(int(g.get("count", 1)) for g in cfg.get("instance_group") or []) or 1
    threads = int(params.get("num_threads") or 0) or max(
        1, int((cores or devices.usable_cores()) * float(params.get("cpu_share") or 1))
        // instances)
    batching = cfg.get("dynamic_batching")
    if batching is None:
        batching_words = "off"
    else:
        batching_words = (f"on, max_queue_delay "
                          f"{int(batching.get('max_queue_delay_microseconds', 0))} us")
        if batching.get("preferred_batch_size"):
            sizes = ", ".join(str(int(n)) for n in batching["preferred_batch_size"])
            batching_words += f", preferred sizes {sizes}"
    return {"runtime": params.get("runtime") or "torch", "instances": str(instances),
            "threads per instance": str(threads),
            "max_batch_size": str(int(cfg.get("max_batch_size", 0))),
            "dynamic batching": batching_words}


def _why(found: Search, hand: pd.DataFrame, ours: pd.Series, theirs: pd.Series) -> str:
    """The sentences that say where a gap between the two bests comes from, each drawn from the
    rows: levels one side measured and the other did not, the two at a level both measured,
    and what the two configs set differently."""
    budget = found.settings.p95_budget_ms
    words = []
    level, hand_levels = int(theirs["concurrency"]), sorted(int(c) for c in
                                                            hand["concurrency"].unique())
    if level not in hand_levels:
        words.append(f"The hand-tuned runs measured concurrency "
                     f"{', '.join(map(str, hand_levels))}; Model Analyzer's best came at "
                     f"{level}, a level they did not measure.")
    shared = int(ours["concurrency"])
    there = best_within(found.points[found.points["concurrency"] == shared], budget)
    if there is not None and shared != level:
        words.append(f"At concurrency {shared}, a level both measured, Model Analyzer's best "
                     f"was {there['config name']} ({there['runtime']}) with "
                     f"{there[results.THROUGHPUT]:.1f} infer/s, p95 "
                     f"{there['p95 latency (ms)']:.1f} ms, against the hand-tuned "
                     f"{ours[results.THROUGHPUT]:.1f} infer/s.")
    mine = ours.get("config") if isinstance(ours.get("config"), dict) else None
    searched = found.configs.get(theirs["variant"])
    if mine is not None and searched is not None:
        a, b = knobs(searched), knobs(mine)
        changed = [f"{key} {a[key]} (Model Analyzer) against {b[key]}" for key in a
                   if a[key] != b[key]]
        words.append("The two configs differ in: " + "; ".join(changed) + "." if changed else
                     "The two configs set the same runtime, instances, threads, max_batch_size "
                     "and dynamic batching.")
    return " ".join(words)


def compare(found: Search, hand: pd.DataFrame) -> str:
    """Model Analyzer's best configuration against the hand-tuned best, both at the search's
    p95 budget, in words drawn from the two rows (throughput, the level each was measured
    at, and the search's own limits), then why: a level only one side measured, the two at a
    level both measured, and what their configs set differently (`knobs`; the hand-tuned
    config from `hand`'s 'config' column, where `hand_tuned` put it)."""
    budget = found.settings.p95_budget_ms
    ours, theirs = best_within(hand, budget), best_within(found.points, budget)
    if theirs is None:
        return (f"No configuration Model Analyzer measured kept p95 within {budget:g} ms: "
                "nothing to compare.")
    text = (f"Within a p95 of {budget:g} ms, Model Analyzer's best was "
            f"{theirs['config name']} ({theirs['runtime']}; {theirs['instance group']}, max "
            f"batch {int(theirs['max batch size'])}, dynamic batching "
            f"{'on' if theirs['dynamic batching'] else 'off'}): "
            f"{theirs[results.THROUGHPUT]:.1f} infer/s at concurrency "
            f"{int(theirs['concurrency'])}, p95 {theirs['p95 latency (ms)']:.1f} ms.")
    if ours is None:
        return text + (f" No hand-tuned level of this course run kept p95 within {budget:g} "
                       "ms.")
    text += (f" The hand-tuned best was '{ours['variant']}': {ours[results.THROUGHPUT]:.1f} "
             f"infer/s at concurrency {int(ours['concurrency'])}, p95 "
             f"{ours['p95 latency (ms)']:.1f} ms.")
    ratio = theirs[results.THROUGHPUT] / ours[results.THROUGHPUT]
    if abs(ratio - 1) <= SAME_WITHIN:
        verdict = (f"Neither beat the other clearly: {ratio:.2f}x, within the "
                   f"{SAME_WITHIN:.0%} by which two measurements of one config may differ")
    elif ratio > 1:
        verdict = f"Model Analyzer beat the hand-tuned best: {ratio:.2f}x its throughput"
    else:
        verdict = f"Model Analyzer did not beat the hand-tuned best: {ratio:.2f}x its throughput"
    text += f" {verdict}."
    limits = found.settings
    if int(ours["concurrency"]) > limits.max_concurrency:
        text += (f" Its search went up to concurrency {limits.max_concurrency}; the hand-tuned "
                 f"best was measured with {int(ours['concurrency'])} clients.")
    why = _why(found, hand, ours, theirs)
    return f"{text} {why}" if why else text


def save(found: Search, model: str = "food_classifier") -> list[Path]:
    """Put the search into the course's results: one saved run per configuration Model
    Analyzer measured (variant 'Model Analyzer: <config> (<runtime>)', so `results.table()`,
    the comparison and the hand-in see them), and its best configuration within the p95 budget
    as `configs.analyzer_best_path()`, renamed `model` (what `make serve VARIANT=analyzer`
    serves). Returns the files written."""
    from google.protobuf import json_format

    written = []
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for variant, rows in found.points.groupby("variant", sort=False):
        df = pd.DataFrame({
            "concurrency": rows["concurrency"].astype(int),
            results.THROUGHPUT: rows[results.THROUGHPUT],
            results.P95: rows["p95 latency (ms)"] * 1000,
            results.P99: rows["p99 latency (ms)"] * 1000,
            "server queue (us)": rows["server queue (ms)"] * 1000,
            "server compute infer (us)": rows["server compute infer (ms)"] * 1000,
            "measurement_mode": "Model Analyzer",
        }).reset_index(drop=True)
        cfg = found.configs.get(variant)
        meta = {
            "variant": variant, "model": model, "mode": "embedded",
            "device": "cpu", "gpu_config_on_cpu": False, "machine": devices.machine(),
            "server_version": None,
            "config": (json_format.MessageToDict(cfg, preserving_proto_field_name=True)
                       if cfg is not None else None),
            "concurrency": sorted(df["concurrency"].unique().tolist()),
            "measurement_ms": found.settings.measurement_ms,
            "quick": settings.quick_mode(), "date": date,
            "commands": [f"model-analyzer profile ({found.settings.mode} search)"],
            "notes": f"Model Analyzer {found.settings.mode} search, runtime "
                     f"{rows['runtime'].iloc[0]}, p95 budget {found.settings.p95_budget_ms:g} ms",
        }
        written.append(results.save_run(results.PerfRun(df=df, meta=meta, raw={},
                                                        metrics=pd.DataFrame())))
    best = best_within(found.points, found.settings.p95_budget_ms)
    if best is not None and best["variant"] in found.configs:
        cfg = configs.mc.ModelConfig()
        cfg.CopyFrom(found.configs[best["variant"]])
        cfg.name = model
        path = configs.analyzer_best_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, configs.render(cfg, source=f"Model Analyzer's {best['variant']}",
                                          regenerate="notebook 09 (analyzer.save)"))
        written.append(path)
    return written


def summary(found: Search) -> pd.DataFrame:
    """One row per configuration Model Analyzer measured: runtime, instances, max batch size,
    dynamic batching, and its highest throughput within the p95 budget (with that level's
    concurrency and p95), best first."""
    budget = found.settings.p95_budget_ms
    best = f"best infer/s within p95 {budget:g} ms"
    rows = []
    for _variant, points in found.points.groupby("variant", sort=False):
        top = best_within(points, budget)
        first = points.iloc[0]
        rows.append({"configuration": first["config name"], "runtime": first["runtime"],
                     "instance group": first["instance group"],
                     "max batch size": int(first["max batch size"]),
                     "dynamic batching": bool(first["dynamic batching"]),
                     "levels measured": len(points),
                     best: None if top is None else round(top[results.THROUGHPUT], 1),
                     "at concurrency": None if top is None else int(top["concurrency"]),
                     "p95 (ms)": None if top is None else round(top["p95 latency (ms)"], 1)})
    out = pd.DataFrame(rows).astype({"at concurrency": "Int64"})  # no level: <NA>, not 4.0
    return out.sort_values(best, ascending=False, na_position="last").reset_index(drop=True)
