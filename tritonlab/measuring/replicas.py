"""One Triton replica against two behind nginx, measured with perf_analyzer; and which replica
served each request, counted twice (each replica's own metrics, and nginx's access log).

`compare` measures the setups of this machine's mode (serving.choose_mode) at the same
concurrency levels, over HTTP and gRPC, through the same `perf.run` as every other measurement
of the course (quick mode shortens its windows and levels, never its code path): embedded
replicas on this machine's shared cores, or, on the GPU node (Docker mode), one Triton with both
GPUs against two replica containers with one GPU each. `split` counts the requests each replica
served while a block of code ran. `explain` states the verdict from the numbers.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from tritonclient.grpc import model_config_pb2 as mc

from .. import settings
from ..common import atomic_write, log
from ..serving import choose_mode, configs, deploy, devices, get_server
from ..serving.docker_replicas import DockerReplicas, gpu_instances, remove_leftovers
from ..serving.replicas import LoadBalancer, Replicas, nginx_version
from . import metrics, perf, reports
from .results import P50, P95, P99, REQUESTS, THROUGHPUT

#: The setups `compare` can measure here (embedded mode): one replica reached directly, the same
#: behind nginx (what the hop through the load balancer costs alone), and two replicas behind
#: nginx, all on this machine's cores.
ONE = "1 replica"
ONE_BEHIND = "1 replica behind nginx"
TWO = "2 replicas behind nginx"
#: The setups of the GPU node (Docker mode): compose's triton container with both GPUs, and two
#: replica containers (serving.docker_replicas) with one GPU each, behind nginx.
ONE_TWO_GPUS = "1 Triton, 2 GPUs"
TWO_ONE_GPU = "2 replicas, 1 GPU each, behind nginx"
#: Every setup: (Triton servers, behind nginx).
SETUPS = {ONE: (1, False), ONE_BEHIND: (1, True), TWO: (2, True),
          ONE_TWO_GPUS: (1, False), TWO_ONE_GPU: (2, True)}
#: The setups each mode (serving.choose_mode) offers, in the order `compare` measures them.
MODE_SETUPS = {"embedded": (ONE, ONE_BEHIND, TWO), "docker": (ONE_TWO_GPUS, TWO_ONE_GPU)}
#: The GPUs the GPU node's setups use: the P100 node's two.
GPU_PAIR = (0, 1)
#: The pairs `explain` judges, (one server, two replicas): the first a table holds both of.
PAIRS = ((ONE, TWO), (ONE_TWO_GPUS, TWO_ONE_GPU))
#: A throughput ratio within this fraction of 1 is "no clear change": the tolerance the course's
#: verdicts use where a row records none (reports.DEFAULT_TOLERANCE_PERCENT).
NO_CLEAR_CHANGE = reports.DEFAULT_TOLERANCE_PERCENT / 100
#: The tidy table's columns (`compare`); REQUESTS: how many requests a level's figures rest on.
COLUMNS = ["setup", "replicas", "protocol", "concurrency", THROUGHPUT, "p50 latency (ms)",
           "p95 latency (ms)", "p99 latency (ms)", "mean batch size", REQUESTS,
           "stability_percent"]


def setups_for(setups: Sequence[str] | None = None, mode: str | None = None) -> tuple[str, ...]:
    """The setups `compare` measures in `mode` ('embedded' or 'docker'; default this machine's,
    serving.choose_mode): every one MODE_SETUPS offers that mode when `setups` is None, else
    `setups`, checked. Raises ValueError naming the setups the mode offers."""
    mode = mode or choose_mode()[0]
    offered = MODE_SETUPS[mode]
    if setups is None:
        return offered
    chosen = tuple(setups)
    unknown = [s for s in chosen if s not in offered]
    if unknown or not chosen:
        raise ValueError(f"setups {unknown or '(none)'}: in {mode} mode choose from "
                         f"{list(offered)}")
    return chosen


def default_settings() -> perf.PerfSettings:
    """Concurrency 1, 4, 8 and 16 with full windows; quick mode (tests, `make lab`): 8 only,
    where the replicas' dynamic batchers have requests to group, with short windows
    (PerfSettings.for_course): each setup is started and measured over two protocols."""
    return perf.PerfSettings.for_course([1, 4, 8, 16], quick_concurrency=[8])


# --- which replica served what --------------------------------------------------------------------
def _infer_request(entry: dict, model: str) -> bool:
    """Whether an access-log entry is an inference request for `model`. Over gRPC the model's
    name is inside the request's body, which nginx does not log: every ModelInfer counts."""
    if entry["uri"] == "/inference.GRPCInferenceService/ModelInfer":
        return True
    return re.fullmatch(rf"/v2/models/{re.escape(model)}(/versions/\d+)?/infer",
                        entry["uri"].split("?")[0]) is not None


def request_successes(metrics_url: str, model: str) -> float:
    """Triton's `nv_inference_request_success` for `model` (all versions) at `metrics_url`."""
    return metrics.read(metrics_url, model)["request_success"]


class Split:
    """Counts, per replica, the requests served while its `with` block runs (see `split`).

    After the block, `table` has one row per replica: replica (its index), http upstream and
    grpc upstream ('host:port'), requests (Triton metrics) (the change of its
    nv_inference_request_success for `model`), requests (nginx log) (inference requests nginx
    logged as answered by it), share (%) (of the logged requests). `unanswered`: inference
    requests nginx logged without a replica (none could be reached).
    """

    def __init__(self, balancer: LoadBalancer, model: str = "food_classifier",
                 settle_s: float = 5.0) -> None:
        self.balancer, self.model, self.settle_s = balancer, model, settle_s
        self.table = pd.DataFrame()
        self.unanswered = 0
        self._before: list[float] = []
        self._offset = 0

    def _successes(self) -> list[float]:
        return [request_successes(url, self.model) for url in self.balancer.replicas.metrics_urls]

    def _logged(self) -> list[dict]:
        return [e for e in self.balancer.access_entries(self._offset)
                if _infer_request(e, self.model)]

    def __enter__(self) -> Split:
        self._before = self._successes()
        self._offset = self.balancer.access_log_size()
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.table = self._count()

    def _count(self) -> pd.DataFrame:
        # A request still finishing when the block ends is counted a moment later by Triton
        # and by nginx: read both until neither changes for 0.3 s (at most `settle_s`).
        reading = (self._successes(), len(self._logged()))
        deadline = time.monotonic() + self.settle_s
        while time.monotonic() < deadline:
            time.sleep(0.3)
            again = (self._successes(), len(self._logged()))
            if again == reading:
                break
            reading = again
        after, logged = self._successes(), self._logged()
        self.unanswered = sum(1 for e in logged if e["replica"] is None)
        total = sum(1 for e in logged if e["replica"] is not None)
        rows = []
        for i, server in enumerate(self.balancer.replicas):
            served = sum(1 for e in logged if e["replica"] == i)
            rows.append({"replica": i, "http upstream": server.http_url,
                         "grpc upstream": server.grpc_url,
                         "requests (Triton metrics)": int(after[i] - self._before[i]),
                         "requests (nginx log)": served,
                         "share (%)": round(100 * served / total, 1) if total else 0.0})
        return pd.DataFrame(rows)

    @property
    def agree(self) -> bool:
        """Whether the replicas' metrics and nginx's access log count the same requests."""
        return _counts_agree(self.table)


def _counts_agree(table: pd.DataFrame) -> bool:
    """Whether a `Split.table`'s two counts are the same for every replica."""
    return bool(not table.empty and (table["requests (Triton metrics)"]
                                     == table["requests (nginx log)"]).all())


def split(balancer: LoadBalancer, model: str = "food_classifier") -> Split:
    """Count which replica served each request of `model` during a `with` block:

        with split(balancer, "food_classifier") as served:
            perf.run(balancer, "food_classifier", "2 replicas", opts)
        served.table

    Read from each replica's own Triton metrics (nv_inference_request_success, before and
    after) and from nginx's access log ($upstream_addr), so the two can be checked against each
    other (`Split.agree`, `explain_split`). Requests from other clients meanwhile count too."""
    return Split(balancer, model)


def explain_split(table: pd.DataFrame) -> str:
    """One sentence per replica from a `Split.table`, and whether the two counts agree."""
    if table.empty:
        return "No requests were counted."
    parts = [f"replica {r['replica']} served {r['requests (nginx log)']} requests "
             f"({r['share (%)']:.0f} %)" for _, r in table.iterrows()]
    check = ("The two counts agree: nginx's access log and each replica's own metrics count the "
             "same requests." if _counts_agree(table) else
             "The two counts differ: the replicas' metrics count "
             + ", ".join(str(n) for n in table["requests (Triton metrics)"])
             + " and nginx's access log "
             + ", ".join(str(n) for n in table["requests (nginx log)"])
             + " (other clients, or failed requests, which Triton does not count as successes).")
    return "; ".join(parts) + ". " + check


# --- one replica against two ----------------------------------------------------------------------
def mean_batch_size(counts: dict[int, int]) -> float:
    """Images per execution from {batch size: executions} (NaN when nothing ran)."""
    executions = sum(counts.values())
    return sum(size * n for size, n in counts.items()) / executions if executions else float("nan")


def _tidy(run: perf.PerfRun, setup: str, replicas: int, protocol: str) -> pd.DataFrame:
    df = run.df
    out = pd.DataFrame({"setup": setup, "replicas": replicas, "protocol": protocol,
                        "concurrency": df["concurrency"].astype(int),
                        THROUGHPUT: df[THROUGHPUT]})
    for column, name in ((P50, "p50 latency (ms)"), (P95, "p95 latency (ms)"),
                         (P99, "p99 latency (ms)")):
        out[name] = df[column] / 1000
    # what the replicas' dynamic batchers made of the requests (all replicas together)
    out["mean batch size"] = [mean_batch_size(run.batch_counts.get(int(level), {}))
                              for level in out["concurrency"]]
    out[REQUESTS] = df[REQUESTS] if REQUESTS in df else None
    # how far the level's windows were allowed to differ: a smaller change is no clear change
    out["stability_percent"] = df["stability_percent"] if "stability_percent" in df else None
    return out


def one_triton_plan(cfg: mc.ModelConfig) -> str:
    """Where one Triton runs `cfg`'s GPU instances, as one sentence: '1 Triton x 4 instance(s)
    on 2 GPU(s): 2 on GPU 0, 2 on GPU 1' (KIND_GPU groups that name their GPUs)."""
    per_gpu = gpu_instances(cfg)
    return (f"1 Triton x {sum(per_gpu.values())} instance(s) on {len(per_gpu)} GPU(s): "
            + ", ".join(f"{n} on GPU {gpu}" for gpu, n in per_gpu.items()))


@contextmanager
def _serving(setup: str, cfg: mc.ModelConfig, repository: Path, state: Path, method: str,
             ready: dict, plans: dict) -> Iterator[tuple[object, LoadBalancer | None]]:
    """`cfg` served as `setup` says while the block runs; yields (what perf_analyzer talks to,
    the LoadBalancer or None) and fills ready[setup] and plans[setup]. ONE_TWO_GPUS is compose's
    own container (get_server()), its baseline config restored afterwards; every other setup
    gets replicas of its own, stopped afterwards."""
    count, behind = SETUPS[setup]
    if setup == ONE_TWO_GPUS:
        server = get_server()
        started = 0.0 if server.is_ready() else server.start()
        # a Triton container without the GPUs (`make node-check`) runs them as CPU instances
        runnable, note = configs.for_this_machine(cfg, devices.gpu_count())
        if note:
            log.info(note)
        try:
            loaded = server.reload_model(cfg.name, config=runnable)
            ready[setup] = {"start (s)": round(started, 1), "load (s)": round(loaded, 1)}
            plans[setup] = (one_triton_plan(cfg) if runnable is cfg else
                            f"{one_triton_plan(cfg)}, run here as CPU instances (no GPU)")
            yield server, None
        finally:
            deploy.restore_baseline(server)
        return
    folder = f"{count}-replicas" + ("-gpu" if setup == TWO_ONE_GPU else "") + (
        "-nginx" if behind else "")
    if setup == TWO_ONE_GPU:
        # containers a killed kernel left behind hold GPU memory, whatever their number
        removed = remove_leftovers()
        if removed:
            log.info(f"removed replica containers left from an earlier run: {', '.join(removed)}")
        replicas = DockerReplicas(count, repository, state / folder, models=())
        log.info("\n".join(["starting:", *replicas.command_lines()]))
    else:
        replicas = Replicas(count, repository, state / folder, models=())
    balancer = None
    try:
        started = replicas.start()
        loaded = replicas.serve(cfg)
        ready[setup] = {"start (s)": round(started, 1), "load (s)": round(loaded, 1)}
        plans[setup] = replicas.plan()
        if behind:
            balancer = LoadBalancer(replicas, state / f"{folder}-balancer", method=method)
            balancer.start()
        yield (balancer if balancer is not None else replicas[0]), balancer
    finally:
        if balancer is not None:
            balancer.stop()
        replicas.stop()


def compare(repository: Path | str | None = None, variant: str = "fastest",
            opts: perf.PerfSettings | None = None, protocols: Sequence[str] = ("http", "grpc"),
            method: str = "round_robin", state_dir: Path | str | None = None,
            model: str = "food_classifier", save: bool = True,
            setups: Sequence[str] | None = None) -> pd.DataFrame:
    """Measure `model`, served as the classifier `variant` (deploy.prepare_variant), in each of
    `setups` (default None: every setup of this machine's mode, `setups_for`), balanced by
    `method` where behind nginx, with perf_analyzer at the same levels (`opts`, default
    `default_settings()`) over each of `protocols`.

    Embedded mode (ONE, ONE_BEHIND, TWO): each setup gets replicas of its own
    (serving.replicas.Replicas), on `repository` (default: the served one), started for it and
    stopped after it (state under `state_dir`, default <state>/replicas); each replica gets its
    share of the cores (serving.replicas.share_cores).

    Docker mode, the GPU node (ONE_TWO_GPUS, TWO_ONE_GPU): the variant's instances are placed on
    GPUs 0 and 1 as notebook 04's two-GPU config places them (configs.on_gpus: 2 CPU instances
    become 2 on each GPU). ONE_TWO_GPUS loads that config on compose's own triton container
    (get_server(); started if it is not ready) and restores its baseline afterwards
    (deploy.restore_baseline); TWO_ONE_GPU runs two replica containers
    (serving.docker_replicas.DockerReplicas), each loading the instances of its own GPU, behind
    nginx in this (the Jupyter) container, and removes them afterwards. compose's container
    stays up, idle, meanwhile.

    Returns the tidy table (COLUMNS: one row per setup, protocol and level; throughput in
    infer/s, latencies in ms, and the mean batch size the servers' Triton statistics counted,
    in images per execution). Its `attrs` hold `splits` ({protocol: Split.table} for the two
    replicas), `plans` ({setup: threads on cores, or instances on GPUs}), `ready` ({setup:
    {'start (s)': seconds until every server was live, 'load (s)': seconds to load the
    variant}}), `cores` (os.cpu_count()), `mode` ('embedded' or 'docker'), `gpus` (the GPU
    indices used, empty in embedded mode) and `path` (the saved JSON file, with a CSV beside
    it, under <results>/replicas/, when `save`). Raises ValueError for a setup the mode does
    not offer (before anything starts), perf.PerfError or a serving error (NginxMissing: run
    `make system-deps`) saying what to do.
    """
    mode = choose_mode()[0]
    setups = setups_for(setups, mode)
    repository = Path(repository or settings.model_repository())
    state = Path(state_dir) if state_dir else settings.state_dir() / "replicas"
    opts = opts or default_settings()
    nginx = nginx_version()  # before any measuring: NginxMissing if it is not installed
    cfg, _ = deploy.prepare_variant(variant, repository)  # the ONNX export, if it needs one
    gpus = list(GPU_PAIR) if mode == "docker" else []
    if gpus:
        cfg = configs.on_gpus(cfg, gpus)  # the same instances for both GPU-node setups
        configs.validate(cfg)
    frames, splits, plans, ready, commands = [], {}, {}, {}, []
    for setup in setups:
        count = SETUPS[setup][0]
        with _serving(setup, cfg, repository, state, method, ready, plans) as (target,
                                                                                balancer):
            for protocol in protocols:
                run_opts = replace(opts, protocol=protocol)
                label = f"{setup} ({protocol})"
                # one replica alone: nothing to split
                with split(balancer, model) if balancer else nullcontext() as served:
                    run = perf.run(target, model, label, run_opts, save=False,
                                   sample_metrics=False)
                if served is not None and count > 1:
                    splits[protocol] = served.table
                    log.info(f"{protocol}: {explain_split(served.table)}")
                commands += run.meta["commands"]
                frames.append(_tidy(run, setup, count, protocol))
    df = pd.concat(frames, ignore_index=True)[COLUMNS]
    df.attrs.update(splits=splits, plans=plans, ready=ready, cores=os.cpu_count(), mode=mode,
                    gpus=gpus, gpus_present=devices.gpu_count() if gpus else 0)
    if save:
        df.attrs["path"] = _save(df, {
            "variant": variant, "model": model, "method": method, "nginx": nginx,
            "mode": mode, "gpus": gpus, "cores": os.cpu_count(), "plans": plans,
            "ready": ready, "quick": settings.quick_mode(),
            "measurement_ms": opts.measurement_ms, "commands": commands,
            "splits": {p: json.loads(t.to_json(orient="records")) for p, t in splits.items()}})
    return df


def _save(df: pd.DataFrame, meta: dict) -> Path:
    """Keep a comparison as <results>/replicas/<UTC time>_compare.json, and its table as .csv."""
    date = datetime.now(timezone.utc)
    path = settings.results_dir() / "replicas" / f"{date:%Y%m%dT%H%M%SZ}_compare.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"date": date.isoformat(timespec="seconds"), **meta,
            "rows": json.loads(df.to_json(orient="records"))}
    atomic_write(path.with_suffix(".csv"), df.to_csv(index=False))
    log.info(f"saved {path}")
    return atomic_write(path, json.dumps(body, indent=1))


#: How `explain` names each pair's setups: (two in a line, one in a line, two as the subject of
#: the overall verdict, one as its object).
_NAMES = {TWO: ("two replicas behind nginx", "one", "Two replicas", "one"),
          TWO_ONE_GPU: ("two replicas (one GPU each) behind nginx", "one Triton on both GPUs",
                        "Two replicas with one GPU each", "one Triton with both GPUs")}
#: The GPU node's setups where Docker gave the containers no GPU (`make node-check`): the GPU
#: groups ran as CPU instances, so the names say containers, not GPUs.
_NAMES_WITHOUT_GPUS = ("two replica containers behind nginx", "one Triton container",
                       "Two replica containers", "one Triton container")


def explain(df: pd.DataFrame, tolerance: float = NO_CLEAR_CHANGE) -> str:
    """The verdict of a `compare` table, from its numbers: per protocol and level, the
    throughput of two replicas over one server (within `tolerance` of 1: "no clear change";
    no verdict for a level resting on too few requests, reports.MIN_REQUESTS) and their p95
    latencies; then why, on the machine it ran on. The pair judged is the first of PAIRS the
    table holds both setups of: ONE and TWO (embedded replicas on shared cores, with the hop
    through nginx alone where ONE_BEHIND was measured), or ONE_TWO_GPUS and TWO_ONE_GPU (the
    GPU node)."""
    cores = df.attrs.get("cores") or os.cpu_count()
    present = set(df["setup"]) if "setup" in df else set()
    one_setup, two_setup = next((pair for pair in PAIRS if set(pair) <= present), PAIRS[0])
    gpus = df.attrs.get("gpus") or list(GPU_PAIR)
    without_gpus = (two_setup == TWO_ONE_GPU
                    and df.attrs.get("gpus_present", len(gpus)) < len(gpus))
    two_words, one_words, two_subject, one_object = (
        _NAMES_WITHOUT_GPUS if without_gpus else _NAMES[two_setup])
    lines, ratios = [], []
    for (protocol, level), group in df.groupby(["protocol", "concurrency"], sort=False):
        by_setup = group.set_index("setup")
        if not {one_setup, two_setup} <= set(by_setup.index):
            continue
        one, two = by_setup.loc[one_setup], by_setup.loc[two_setup]
        ratio = two[THROUGHPUT] / one[THROUGHPUT]
        # a level resting on too few requests carries no verdict (reports.MIN_REQUESTS)
        counted = REQUESTS in group and group[REQUESTS].notna().all()
        judged = not counted or (reports.enough_requests(one) and reports.enough_requests(two))
        # the level's own windows may have differed by more than `tolerance` (quick mode: 30 %)
        allowed = max(tolerance, reports.tolerance_of(one, two))
        if judged:
            ratios.append((ratio, allowed))
        words = (_words(ratio, allowed) if judged else
                 f"too few requests to judge, fewer than {reports.MIN_REQUESTS} at one setup")
        line = (f"{protocol.upper()} at concurrency {level}: {two[THROUGHPUT]:.0f} infer/s "
                f"with {two_words} against {one[THROUGHPUT]:.0f} with {one_words} "
                f"({ratio:.2f}x: {words}); p95 "
                f"{two['p95 latency (ms)']:.1f} ms against {one['p95 latency (ms)']:.1f} ms")
        if "mean batch size" in group and group["mean batch size"].notna().all():
            line += (f"; mean batch {two['mean batch size']:.1f} against "
                     f"{one['mean batch size']:.1f} images")
        if one_setup == ONE and ONE_BEHIND in by_setup.index:
            hop = by_setup.loc[ONE_BEHIND]
            hop_ratio = hop[THROUGHPUT] / one[THROUGHPUT]
            hop_judged = not counted or (reports.enough_requests(hop)
                                         and reports.enough_requests(one))
            hop_words = (_words(hop_ratio, max(tolerance, reports.tolerance_of(one, hop)))
                         if hop_judged else "too few requests")
            line += (f". The hop alone (one replica behind nginx): {hop[THROUGHPUT]:.0f} "
                     f"infer/s ({hop_ratio:.2f}x: {hop_words}), p95 "
                     f"{hop['p95 latency (ms)']:.1f} ms")
        lines.append(line + ".")
    if not ratios:
        return "\n".join(["No level was measured with both setups on enough requests to "
                          "judge.", *lines])
    verdicts = {_words(r, allowed) for r, allowed in ratios}
    widest = max(allowed for _, allowed in ratios)
    ratios = [r for r, _ in ratios]
    if len(ratios) == 1:
        overall = (f"{two_subject} gave {ratios[0]:.2f}x the throughput of {one_object} at the "
                   f"one level measured: {verdicts.pop()}.")
    else:
        overall = (f"{two_subject} gave {min(ratios):.2f}x to {max(ratios):.2f}x the "
                   f"throughput of {one_object} over the {len(ratios)} measurements (protocol "
                   "and concurrency level) judged: "
                   + (f"{verdicts.pop()} in every one." if len(verdicts) == 1
                      else "it depends on the protocol and the level (below)."))
    if widest > tolerance:
        overall += (f" (A change within {widest:.0%} is no clear change here: the measurement's "
                    "windows were allowed to differ by that much.)")
    lines.insert(0, overall)
    if one_setup == ONE:
        lines.append(f"This machine has {cores} cores (os.cpu_count()): both replicas run on "
                     "the same cores, and perf_analyzer and nginx compete for them too: a second "
                     "replica brings a second Triton and a hop through nginx, not cores of its "
                     "own. Where two replicas gave more on the same cores, look at how the "
                     "requests were grouped (the mean batch sizes) and at the threads each setup "
                     "ran (below).")
    elif without_gpus:
        lines.append(f"Docker gave these containers no GPU (`make node-check`, or a node started "
                     "without compose.node.yaml): the instances placed on GPUs ran as CPU "
                     f"instances, on this machine's {cores} cores (os.cpu_count()), which both "
                     "setups share with nginx and perf_analyzer. These are CPU numbers, not the "
                     "node's; the mean batch sizes still show how each replica batches only the "
                     "requests nginx sends it.")
    else:
        lines.append(f"Both setups ran the same instances on the same {len(gpus)} GPUs: one "
                     "Triton scheduled all of them, or each replica those of its own GPU (a "
                     "container given that GPU alone), behind a hop through nginx. Each replica "
                     "has its own GPU; what they share is the CPU: nginx and perf_analyzer run in "
                     f"the jupyter container, on the node's {cores} cores (os.cpu_count()), "
                     "beside the Triton containers' own CPU work (decoding the JPEGs). Where "
                     "two replicas gave more, look at how the requests were grouped (the mean "
                     "batch sizes: each replica batches only the requests nginx sends it) and "
                     "at the instances each setup ran (below).")
    for setup, plan in (df.attrs.get("plans") or {}).items():
        lines.append(f"{setup}: {plan}.")
    return "\n".join(lines)


def _words(ratio: float, tolerance: float) -> str:
    if abs(ratio - 1) <= tolerance:
        return "no clear change"
    return "more throughput" if ratio > 1 else "less throughput"
