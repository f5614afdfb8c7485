"""`make bench`: the course's speed and memory figures, measured side by side in one run.

The machine is shared and noisy, so each figure is the median of repeated measurements, and the
targets are ratios measured in the same run. Absolute numbers are printed too. Results are saved
under data/results/bench/ with the machine's description.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil

from .. import settings
from ..assets import blip, onnx_export, samples, weights
from ..assets.repository import classifier_module, copy_repository
from ..common import log, quiet
from ..serving import clients, configs, devices
from ..serving.deploy import deploy
from ..serving.embedded import EmbeddedTriton
from ..settings import TritonAddress
from . import analyzer, captioning, perf, processes, results
from .results import P95, P99, REQUESTS, THROUGHPUT

#: The fastest classifier variant on this 2-core CPU (see configs.FASTEST_CLASSIFIER).
FASTEST = configs.FASTEST_CLASSIFIER


def _quietly(fn, *args, **kwargs):
    with quiet():
        return fn(*args, **kwargs)


def _measure(server, model: str, variant: str, opts: perf.PerfSettings, repeats: int,
             instances: int = 1) -> dict:
    """Median throughput and p95 of `repeats` runs, and where the machine's CPU time went."""
    pid = server.recorded()["pid"]
    if model == "food_classifier":
        processes.model_processes(pid, model, instances)
    cpu_before, began = processes.cpu_seconds(pid), time.monotonic()
    runs = [_quietly(perf.run, server, model, variant, opts, save=False, sample_metrics=False)
            for _ in range(repeats)]
    wall, cpu_after = time.monotonic() - began, processes.cpu_seconds(pid)
    capacity = wall * (psutil.cpu_count() or 1)
    shares = {k: (cpu_after[k] - cpu_before[k]) / capacity for k in cpu_before}
    shares["idle or other"] = max(0.0, 1 - sum(shares.values()))
    rows = [r.df.iloc[0] for r in runs]
    return {"throughput": statistics.median(r[THROUGHPUT] for r in rows),
            "p95_ms": statistics.median(r[P95] for r in rows) / 1000,
            "all_throughputs": [round(float(r[THROUGHPUT]), 2) for r in rows],
            "cpu_share": {k: round(v, 3) for k, v in shares.items()}}


def _in_process_worker(folder: str, work: list, runtime: str, num_threads: int, repeats: int,
                       barrier, out) -> None:
    code = classifier_module(Path(folder).parent.parent)
    dec = code.image_decoding
    model = code.food11_network.Food11Classifier(folder, runtime=runtime, num_threads=num_threads)
    model.predict(np.stack([dec.decode_image(e) for e in work[0]]))  # warm-up
    spans = []
    for _ in range(repeats):
        barrier.wait()  # every worker starts each repeat together, as Triton's instances run
        began = time.monotonic()
        for items in work:
            model.predict(np.stack([dec.decode_image(dec.to_image_bytes(e)) for e in items]))
        spans.append((began, time.monotonic()))
    out.put(spans)


def in_process(repeats: int, batch: int = 8, batches: int = 48,
               instances: int | None = None, num_threads: int | None = None,
               repository: Path | None = None) -> dict:
    """The fastest variant's own code run outside Triton, on the same sample images, with the
    same parallelism: one process per instance, each with the instance's thread count, each
    decoding and classifying batches of `batch` images. Throughput of all processes together."""
    import multiprocessing as mp

    instances = instances or FASTEST.get("instances", 1)
    num_threads = FASTEST["num_threads"] if num_threads is None else num_threads
    folder = str(Path(repository or settings.model_repository()) / "food_classifier" / "1")
    encoded = [p.read_bytes() for p in samples.sample_images()]
    work = [[encoded[(i * batch + j) % len(encoded)] for j in range(batch)]
            for i in range(batches)]
    ctx = mp.get_context("spawn")  # a fresh interpreter, as a Triton model process is
    barrier, out = ctx.Barrier(instances), ctx.Queue()
    procs = [ctx.Process(target=_in_process_worker, daemon=True,
                         args=(folder, work, FASTEST["runtime"], num_threads, repeats, barrier,
                               out)) for _ in range(instances)]
    for proc in procs:
        proc.start()
    try:
        results = [processes.answer(procs, out, timeout=600) for _ in procs]
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    rates = []
    for r in range(repeats):
        began = min(spans[r][0] for spans in results)
        ended = max(spans[r][1] for spans in results)
        rates.append(instances * batch * batches / (ended - began))
    return {"throughput": statistics.median(rates), "all": [round(x, 2) for x in rates],
            "instances": instances, "num_threads": num_threads}


def load_run(server, model: str, concurrency: int, seconds: int) -> dict:
    """perf_analyzer at `concurrency` for about `seconds`: failed requests and memory drift.

    A short warm-up run comes first; the server's resident memory (Triton and its model
    processes) after it is the reference for the memory at the end. Failures are counted by
    Triton itself (its statistics API), so a request perf_analyzer did not notice still counts.
    """
    pid = server.recorded()["pid"]
    warm = perf.PerfSettings(concurrency=[concurrency], measurement_ms=3000,
                             stability_percent=100, max_trials=3)
    _quietly(perf.run, server, model, "warm-up", warm, save=False, sample_metrics=False)
    rss_warm = processes.rss(pid)
    before = clients.model_stats(server.http_url, model)["inference_stats"]
    # Three windows of a third each; 100 % tolerance so perf_analyzer stops after three.
    opts = perf.PerfSettings(concurrency=[concurrency], measurement_ms=seconds * 1000 // 3,
                             stability_percent=100, max_trials=3)
    samples_mib: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(2.0):
            samples_mib.append(processes.rss(pid) / 2**20)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.monotonic()
    error = None
    try:
        row = _quietly(perf.run, server, model, f"load c={concurrency}", opts, save=False,
                       sample_metrics=False).df.iloc[0]
    except perf.PerfError as exc:
        row, error = None, str(exc).splitlines()[0]
    finally:
        done.set()
        sampler.join()
    elapsed = time.monotonic() - began
    after = clients.model_stats(server.http_url, model)["inference_stats"]
    rss_end = processes.rss(pid)
    count = lambda stats, key: int(stats.get(key, {}).get("count", 0))  # noqa: E731
    return {
        "model": model, "concurrency": concurrency, "seconds": round(elapsed, 1),
        "requests_ok": count(after, "success") - count(before, "success"),
        "requests_failed": count(after, "fail") - count(before, "fail"),
        "perf_analyzer_error": error,
        "throughput": None if row is None else float(row[THROUGHPUT]),
        "p99_ms": None if row is None else float(row[P99]) / 1000,
        "rss_after_warmup_mib": rss_warm / 2**20,
        "rss_end_mib": rss_end / 2**20,
        "rss_max_mib": max(samples_mib + [rss_end / 2**20]),
        "rss_growth": rss_end / rss_warm - 1,
    }


def run(repeats: int = 3, window_ms: int = 3000, out_dir: Path | None = None,
        load_seconds: int = 60) -> dict:
    """Measure every figure; returns (and saves) them with pass/miss against the targets."""
    work = Path(tempfile.mkdtemp(prefix="tritonlab-bench-"))
    repo = copy_repository(work / "model_repository")
    with quiet():  # the served weights are copied; a stand-in only where there were none
        food11 = weights.ensure_weights(repo / "food_classifier" / "1", source=weights.STAND_IN)
        blip.ensure_blip(repo / "conditional_captioning" / "1", source=blip.STAND_IN)
    blip_weights = captioning.describe_weights(repo)  # refuses the tiny stand-in
    onnx_export.export_onnx(repo / "food_classifier" / "1")
    server = EmbeddedTriton(repo, address=TritonAddress.free(), state_dir=work / "state")
    figures: dict = {"machine": devices.machine(), "repeats": repeats, "window_ms": window_ms,
                     "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "weights": "stand-in" if food11.get("stand_in") else "trained",
                     "fastest_variant": FASTEST, "blip": blip_weights}
    try:
        log.info("starting Triton ...")
        figures["start_s"] = server.start()
        memory_all = processes.rss(server.recorded()["pid"])
        c8 = perf.PerfSettings(concurrency=[8], measurement_ms=window_ms)

        log.info("1. baseline vs fastest variant at concurrency 8 ...")
        _quietly(deploy, server, configs.classifier_config())
        base = _measure(server, "food_classifier", "baseline", c8, repeats)
        _quietly(deploy, server, configs.classifier_config(**FASTEST))
        fast = _measure(server, "food_classifier", "fastest", c8, repeats,
                        instances=FASTEST["instances"])
        figures["baseline_c8"], figures["fastest_c8"] = base, fast

        log.info("2. serving overhead: the same code in-process ...")
        # Served and in-process measured in turns, so that the machine's background load
        # (shared and noisy) weighs on both alike; the target is the median of the ratios.
        pairs = []
        for _ in range(repeats):
            alone = in_process(1, repository=repo)["throughput"]
            served = _measure(server, "food_classifier", "fastest", c8, 1,
                              instances=FASTEST["instances"])["throughput"]
            pairs.append((served, alone))
        figures["in_process"] = {
            "throughput": statistics.median(a for _, a in pairs),
            "served_throughput": statistics.median(s for s, _ in pairs),
            "served_share": statistics.median(s / a for s, a in pairs),
            "pairs": [[round(s, 2), round(a, 2)] for s, a in pairs],
            "instances": FASTEST["instances"], "num_threads": FASTEST["num_threads"]}

        log.info("3. config change to ready ...")
        reloads, torch_reloads = [], []
        for i in range(repeats):  # the eager PyTorch variant, for comparison
            cfg = configs.classifier_config(max_batch_size=16 - (i % 2) * 8)
            torch_reloads.append(_quietly(deploy, server, cfg))
        for i in range(repeats):  # the fastest variant, served from here on
            cfg = configs.classifier_config(**FASTEST, max_batch_size=16 - (i % 2) * 8)
            reloads.append(_quietly(deploy, server, cfg))
        figures["reload_s"] = statistics.median(reloads)
        figures["reload_torch_s"] = statistics.median(torch_reloads)
        figures["restart_s"] = _quietly(server.restart)

        log.info("4. captioning (full-size BLIP) in the ensemble, variant by variant ...")
        figures["captioning"] = captioning_figures(server, window_ms, repo)
        figures["ensemble_overhead_ms"] = ensemble_overhead(server, 1, calls=4)

        log.info(f"5. load: {load_seconds} s at concurrency 8 (ensemble) and 32 (classifier) ...")
        figures["load_ensemble_c8"] = load_run(server, "food_captioning", 8, load_seconds)
        _quietly(deploy, server, configs.classifier_config(**FASTEST))
        figures["load_classifier_c32"] = load_run(server, "food_classifier", 32, load_seconds)

        log.info("6. memory ...")
        figures["memory_all_models_mib"] = memory_all / 2**20
        pid = server.recorded()["pid"]
        extra = {}
        for runtime, cfg in (("onnxruntime", FASTEST), ("torch", dict(num_threads=1))):
            count = cfg.get("instances", 1)
            _quietly(deploy, server, configs.classifier_config(**dict(cfg, instances=count)))
            before = processes.model_rss(pid, "food_classifier", count)
            _quietly(deploy, server, configs.classifier_config(**dict(cfg, instances=count + 1)))
            after = processes.model_rss(pid, "food_classifier", count + 1)
            extra[runtime] = (after - before) / 2**20
        figures["memory_per_extra_instance_mib"] = extra

        log.info("7. overload: 1.5x the fastest variant's capacity, with and without a queue "
                 "policy ...")
        figures["overload"] = overload(server, fast["throughput"])

        log.info("8. Model Analyzer's quick search against the hand-tuned fastest variant ...")
        figures["model_analyzer"] = model_analyzer(fast, window_ms, work / "model-analyzer")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    figures["verdicts"] = verdicts(figures)
    print_table(figures)
    out_dir = out_dir or settings.results_dir() / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{figures['date'].replace(':', '').replace('-', '')}.json"
    path.write_text(json.dumps(figures, indent=1, default=float))
    log.info(f"\nsaved to {path}")
    return figures


def overload(server, capacity: float, requests: int = 2000, factor: float = 1.5) -> dict:
    """The fastest classifier offered `factor` x its closed-loop `capacity` (Poisson, the same
    seeded arrivals for both), without and with configs.OVERLOAD_QUEUE_POLICY (notebook 07's):
    each config's `openloop.overload_summary` (answered p99, share refused, slowest refusal)."""
    from . import openloop

    policy = configs.classifier_config(**FASTEST)
    configs.set_queue_policy(policy, **configs.OVERLOAD_QUEUE_POLICY)
    with quiet():
        runs = openloop.overload_runs(
            server, "food_classifier",
            {"without": configs.classifier_config(**FASTEST), "with": policy},
            factor * capacity, requests, samples.sample_images(), priority_share=0.1)
    return {"offered_rps": factor * capacity, "requests": requests,
            "policy": configs.OVERLOAD_QUEUE_POLICY,
            **{label: openloop.overload_summary(r, label) for label, r in runs.items()}}


#: Concurrency levels of the captioning figures; the goal is read at the last one.
CAPTION_LEVELS = [1, 4, 8]


def _caption_level(server, name: str, opts: perf.PerfSettings) -> dict:
    """One perf_analyzer run of food_captioning: per level, throughput, p95 (ms) and the
    requests the figures rest on."""
    run = _quietly(perf.run, server, "food_captioning", name, opts, save=False,
                   sample_metrics=False)
    steps = None if run.steps.empty else run.steps.set_index(["step", "concurrency"])
    levels = {}
    for _, row in run.df.iterrows():
        level = int(row["concurrency"])
        entry = {"throughput": float(row[THROUGHPUT]), "p95_ms": float(row[P95]) / 1000,
                 "requests": int(row.get(REQUESTS, 0) or 0)}
        if steps is not None and ("conditional_captioning", level) in steps.index:
            step = steps.loc[("conditional_captioning", level)]
            entry["captioning_queue_ms"] = float(step["server queue (us)"]) / 1000
            entry["captioning_compute_ms"] = float(step["server compute infer (us)"]) / 1000
        levels[level] = entry
    return levels


def captioning_figures(server, window_ms: int, repository: Path) -> dict:
    """The captioning step's variants in the served ensemble (perf_analyzer on
    food_captioning), the fastest's code in-process on batches of 8, whether each variant's
    captions equal eager float32 generate()'s, and the captioner's size, load time and memory.

    Each level is one perf_analyzer measurement of at least three windows that agree, each
    holding about 12 requests (a caption takes seconds here, so repeating whole runs, as the
    classifier's figures do, would take most of an hour).
    """
    opts = perf.PerfSettings(concurrency=CAPTION_LEVELS, measurement_ms=window_ms,
                             min_requests=12)
    top = perf.PerfSettings(concurrency=CAPTION_LEVELS[-1:], measurement_ms=window_ms,
                            min_requests=12)
    out: dict = {"levels": CAPTION_LEVELS, "weights": captioning.describe_weights(repository)}
    plans = (("naive", dict(split=False, captioning="naive"), opts),
             ("fastest", dict(captioning="fastest"), opts),
             ("fastest, cores in halves", dict(shares={"food_classifier": 0.5,
                                                       "conditional_captioning": 0.5}), top),
             ("fastest_bfloat16", dict(captioning="fastest_bfloat16"), top))
    for name, plan, settings_ in plans:
        log.info(f"   {name} ...")
        for step, cfg in configs.ensemble_steps(**plan).items():
            seconds = _quietly(deploy, server, cfg)
            if step == "conditional_captioning" and name == "fastest":
                out["reload_s"] = seconds  # naive -> fastest: a config change, new processes
        out[name] = _caption_level(server, name, settings_)
    log.info("   in-process: the same code on batches of 8, outside Triton ...")
    for cfg in configs.ensemble_steps().values():  # as served, while the captioner loads apart
        _quietly(deploy, server, cfg)
    runs = {v: captioning.in_process(v, batch=8, batches=1 if v == "naive" else 2,
                                     repository=repository, flops=v == "fastest")
            for v in ("fastest", "naive", "fastest_bfloat16")}
    captioning.stop_workers()
    reference = runs["naive"]["captions"]  # eager float32 generate(), one image at a time
    keys = ("images_per_s", "seconds_per_image", "threads", "gflop_per_image",
            "gemm_peak_gflops")
    out["in_process"] = {v: {k: r[k] for k in keys} for v, r in runs.items()}
    out["captions_equal_eager_float32"] = {
        v: sum(a == b for a, b in zip(r["captions"], reference)) for v, r in runs.items()}
    out["captions_compared"] = len(reference)
    log.info("   load time and memory per instance ...")
    out["footprint"] = captioning.footprint(server)
    return out


def ensemble_overhead(server, repeats: int, calls: int = 10) -> dict:
    """Mean latency of the ensemble against calling its two models one after the other."""
    images = [p.read_bytes() for p in samples.sample_images()]
    url = server.http_url

    def timed(fn) -> float:
        times = []
        for i in range(calls):
            began = time.perf_counter()
            fn(images[i % len(images)])
            times.append(time.perf_counter() - began)
        return statistics.mean(times) * 1000

    def two_calls(image: bytes) -> None:
        import tritonclient.http as httpclient

        [pred] = clients.classify(url, [image])
        client = httpclient.InferenceServerClient(url)
        try:
            a = httpclient.InferInput("INPUT_IMAGE", [1, 1], "BYTES")
            a.set_data_from_numpy(np.array([[image]], dtype=object))
            b = httpclient.InferInput("FOOD_LABEL", [1, 1], "BYTES")
            b.set_data_from_numpy(np.array([[pred.label.encode()]], dtype=object))
            client.infer("conditional_captioning", [a, b])
        finally:
            client.close()

    ensemble = statistics.median(timed(lambda im: clients.caption(url, [im]))
                                 for _ in range(repeats))
    sequential = statistics.median(timed(two_calls) for _ in range(repeats))
    return {"ensemble_ms": ensemble, "two_calls_ms": sequential,
            "ensemble_minus_two_calls_ms": ensemble - sequential}


def model_analyzer(fastest: dict, window_ms: int, folder: Path) -> dict:
    """Model Analyzer's quick search on the classifier (ONNX Runtime, up to concurrency 8, two
    instances, max batch 8) against the hand-tuned fastest variant measured at concurrency 8
    (`fastest`: its throughput and p95_ms), both within analyzer.P95_BUDGET_MS of p95. When
    Model Analyzer is missing or fails, the reason instead."""
    opts = analyzer.SearchSettings(mode="quick", max_concurrency=8, max_instance_count=2,
                                   max_model_batch_size=8, measurement_ms=window_ms,
                                   runtimes=["onnxruntime"], concurrency_sweep=False)
    try:
        found = analyzer.search(opts, folder=folder, progress=False)
    except analyzer.AnalyzerError as exc:
        return {"error": str(exc).splitlines()[0]}
    best = analyzer.best_within(found.points, opts.p95_budget_ms)
    out = {"budget_ms": opts.p95_budget_ms, "configs": int(found.points["variant"].nunique()),
           "seconds": round(found.seconds, 1),
           "hand_tuned": {"throughput": fastest["throughput"], "p95_ms": fastest["p95_ms"]}}
    if best is not None:
        out["best"] = {"config": best["config name"], "instance_group": best["instance group"],
                       "max_batch_size": int(best["max batch size"]),
                       "concurrency": int(best["concurrency"]),
                       "throughput": float(best[results.THROUGHPUT]),
                       "p95_ms": float(best["p95 latency (ms)"])}
    return out


def analyzer_rows(m: dict) -> list[tuple]:
    """The bench table's row for `model_analyzer`'s figures."""
    budget = analyzer.P95_BUDGET_MS
    name = f"Model Analyzer's best vs hand-tuned fastest, p95 <= {budget:g} ms"
    if "error" in m:
        return [(name, f"not measured: {m['error']}", "(reported)", None)]
    hand, best = m["hand_tuned"], m.get("best")
    hand_text = (f"{hand['throughput']:.0f}/s (c=8)" if hand["p95_ms"] <= budget
                 else f"over budget (p95 {hand['p95_ms']:.0f} ms at c=8)")
    best_text = ("none within budget" if best is None else
                 f"{best['throughput']:.0f}/s ({best['config']}, {best['instance_group']}, max "
                 f"batch {best['max_batch_size']}, c={best['concurrency']})")
    return [(name, f"{best_text} vs {hand_text}; {m['configs']} configs in {m['seconds']:.0f} s",
             "(reported)", None)]


def verdicts(f: dict) -> list[dict]:
    """Each target with its measured value and whether it is met."""
    speedup = f["fastest_c8"]["throughput"] / f["baseline_c8"]["throughput"]
    p95_ok = f["fastest_c8"]["p95_ms"] <= f["baseline_c8"]["p95_ms"]
    served = f["in_process"]
    rows = [
        ("fastest vs baseline throughput at c=8", f"{speedup:.2f}x", ">= 3x",
         speedup >= 3),
        ("fastest vs baseline p95 at c=8", f"{f['fastest_c8']['p95_ms']:.0f} vs "
         f"{f['baseline_c8']['p95_ms']:.0f} ms", "no worse", p95_ok),
        ("served / in-process throughput (fastest, in turns)",
         f"{served['served_share']:.0%} ({served['served_throughput']:.0f} vs "
         f"{served['throughput']:.0f}/s)", ">= 90%", served["served_share"] >= 0.9),
        ("reload with changed config (median)", f"{f['reload_s']:.1f} s", "<= 5 s",
         f["reload_s"] <= 5),
        ("reload, eager PyTorch variant (median)", f"{f['reload_torch_s']:.1f} s", "(reported)",
         None),
        ("full restart", f"{f['restart_s']:.1f} s", "(reported)", None),
        ("ensemble vs two client calls (mean latency)",
         f"{f['ensemble_overhead_ms']['ensemble_ms']:.0f} vs "
         f"{f['ensemble_overhead_ms']['two_calls_ms']:.0f} ms", "(reported)", None),
        ("server RSS, all course models loaded", f"{f['memory_all_models_mib']:.0f} MiB",
         "(reported)", None),
        ("RSS per extra classifier instance (ORT, torch)",
         f"{f['memory_per_extra_instance_mib']['onnxruntime']:.0f}, "
         f"{f['memory_per_extra_instance_mib']['torch']:.0f} MiB", "(reported)", None),
    ]
    rows += captioning_verdicts(f["captioning"])
    if "overload" in f:
        o = f["overload"]
        rows.append((f"overload {o['offered_rps']:.0f} req/s: answered p99 without vs with "
                     "queue policy", f"{o['without']['answered p99 (ms)']:.0f} vs "
                     f"{o['with']['answered p99 (ms)']:.0f} ms", "(reported)", None))
        rows.append(("overload with queue policy: refused, slowest refusal",
                     f"{o['with']['refused share']:.0%}, "
                     f"{o['with']['slowest refusal (ms)']:.0f} ms "
                     f"(timeout {o['policy']['timeout_microseconds'] / 1000:.0f} ms)",
                     "(reported)", None))
    if "model_analyzer" in f:
        rows += analyzer_rows(f["model_analyzer"])
    for key, name in (("load_classifier_c32", "classifier"), ("load_ensemble_c8", "ensemble")):
        load = f[key]
        rows.append((f"load {name} c={load['concurrency']}, {load['seconds']:.0f} s: failed "
                     "requests", f"{load['requests_failed']} of "
                     f"{load['requests_ok'] + load['requests_failed']}"
                     + (f" ({load['perf_analyzer_error']})" if load["perf_analyzer_error"] else ""),
                     "0", load["requests_failed"] == 0 and not load["perf_analyzer_error"]
                     and load["requests_ok"] > 0))
        rows.append((f"load {name}: RSS end vs after warm-up",
                     f"{load['rss_end_mib']:.0f} vs {load['rss_after_warmup_mib']:.0f} MiB "
                     f"({load['rss_growth']:+.1%})", "<= +10%", load["rss_growth"] <= 0.10))
    return [{"figure": a, "measured": b, "target": c,
             "met": None if d is None else bool(d)} for a, b, c, d in rows]


def captioning_verdicts(c: dict) -> list[tuple]:
    """The captioning rows of the table: the goal at the top level, then what explains it."""
    top = c["levels"][-1]
    naive, fast = c["naive"][top], c["fastest"][top]
    speedup = fast["throughput"] / naive["throughput"]
    alone = c["in_process"]["fastest"]["images_per_s"]
    share = fast["throughput"] / alone
    equal, compared = c["captions_equal_eager_float32"], c["captions_compared"]
    rows = [
        (f"captioning fastest vs naive at c={top}", f"{speedup:.2f}x ({fast['throughput']:.2f} "
         f"vs {naive['throughput']:.2f} infer/s)", ">= 2x", speedup >= 2),
        (f"captioning fastest vs naive p95 at c={top}", f"{fast['p95_ms'] / 1000:.1f} vs "
         f"{naive['p95_ms'] / 1000:.1f} s", "no worse", fast["p95_ms"] <= naive["p95_ms"]),
        (f"captioning served / in-process (fastest, c={top})",
         f"{share:.0%} ({fast['throughput']:.2f} vs {alone:.2f}/s)", ">= 90%", share >= 0.9),
        ("captions equal eager float32 generate(): fastest", f"{equal['fastest']} of {compared}",
         f"{compared}", equal["fastest"] == compared),
        ("captions equal eager float32: bfloat16 (opt-in)",
         f"{equal['fastest_bfloat16']} of {compared}", "(reported)", None),
    ]
    for level in c["levels"]:
        a, b = c["naive"][level], c["fastest"][level]
        rows.append((f"captioning c={level}: naive, fastest (infer/s; p95)",
                     f"{a['throughput']:.2f}, {b['throughput']:.2f}; "
                     f"{a['p95_ms'] / 1000:.1f}, {b['p95_ms'] / 1000:.1f} s", "(reported)", None))
    rows += limit_rows(c["in_process"])
    halves = c["fastest, cores in halves"][top]
    bf16 = c["fastest_bfloat16"][top]
    parts = c["in_process"]["fastest"]["seconds_per_image"]
    w, fp = c["weights"], c["footprint"]
    rss = fp.get("rss_mib_per_instance")
    rows += [
        (f"captioning c={top}: cores by work vs in halves", f"{fast['throughput']:.2f} vs "
         f"{halves['throughput']:.2f} infer/s", "(reported)", None),
        (f"captioning c={top}: bfloat16 (opt-in) vs fastest", f"{bf16['throughput']:.2f} vs "
         f"{fast['throughput']:.2f} infer/s", "(reported)", None),
        ("captioning in-process, s per image by part",
         ", ".join(f"{k} {v:.2f}" for k, v in parts.items()), "(reported)", None),
        ("captioner: parameters, weights on disk", f"{w['parameters_m']:.0f} M, "
         f"{w['disk_mib']} MiB ({'stand-in' if w['stand_in'] else 'real'})", "(reported)", None),
        ("captioner: load, reload with a changed config", f"{fp['load_s']:.1f} s, "
         f"{c['reload_s']:.1f} s (both with warm-up)", "(reported)", None),
        ("captioner: RSS per instance", f"{rss} MiB" if rss is not None else "n/a",
         "(reported)", None),
    ]
    return rows


def limit_rows(runs: dict) -> list[tuple]:
    """What limits the fastest captioning step, from the in-process runs (`captioning.roofline`):
    each part's share of the float32 GEMM peak, and the fastest-vs-naive ratio the course
    could reach in float32 if its vision encoder ran at that peak and its decoder as measured."""
    fast, naive = runs["fastest"], runs["naive"]
    peak = fast["gemm_peak_gflops"]
    parts = fast["seconds_per_image"]
    shares = {part: fast["gflop_per_image"][part] / seconds / peak
              for part, seconds in parts.items() if seconds > 0}
    naive_s = sum(naive["seconds_per_image"].values())
    floor = fast["gflop_per_image"]["vision encoder"] / peak + parts["text decoder"]
    return [
        ("captioning fastest: share of float32 GEMM peak",
         ", ".join(f"{part} {share:.0%}" for part, share in shares.items())
         + f" (peak {peak:.0f} GFLOP/s)", "(reported)", None),
        ("captioning vs naive, encoder at GEMM peak (bound)",
         f"{naive_s / floor:.2f}x ({naive_s:.2f} vs {floor:.2f} s/image)", "(reported)", None),
    ]


def print_table(f: dict) -> None:
    """The figures, their targets and verdicts as a table (through the tritonlab logger)."""
    log.info(f"\nmachine: {f['machine']['cores']} cores, {f['machine']['cpu']}; "
          f"{f['repeats']} repeats, {f['window_ms']} ms windows; {f['weights']} weights")
    log.info(f"{'figure':52} {'measured':30} {'target':10} result")
    for row in f["verdicts"]:
        result = {True: "met", False: "MISSED", None: ""}[row["met"]]
        log.info(f"{row['figure']:52} {row['measured']:30} {row['target']:10} {result}")
    shares = f["fastest_c8"].get("cpu_share")
    if shares:
        log.info(f"CPU during the fastest variant's runs ({f['machine']['cores']} cores): "
              + ", ".join(f"{k} {v:.0%}" for k, v in shares.items()))
    w = f.get("blip") or {}
    if w:
        log.info(f"captioning model: {w['weights']}, {w['parameters_m']:.0f} M parameters; "
                 "a stand-in's captions run to max_new_tokens, so its times are an upper bound")
    log.info(f"absolute: baseline {f['baseline_c8']['throughput']:.1f} infer/s, fastest "
          f"{f['fastest_c8']['throughput']:.1f} infer/s, in-process "
          f"{f['in_process']['throughput']:.1f} images/s")
