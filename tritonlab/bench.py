"""`make bench`: the course's speed and memory figures, measured side by side in one run.

The machine is shared and noisy, so each figure is the median of repeated measurements, and the
targets are ratios measured in the same run. Absolute numbers are printed too. Results are saved
under data/results/bench/ with the machine's description.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil

from . import captioning, clients, configs, devices, perf, samples, settings, weights
from .deploy import deploy
from .models import classifier_module, copy_repository
from .server import LocalTriton
from .settings import Ports

#: The fastest classifier variant on a CPU: ONNX Runtime in the Python backend, dynamic batching.
FASTEST = dict(runtime="onnxruntime", num_threads=0,
               dynamic_batching={"preferred_batch_size": [4, 8],
                                 "max_queue_delay_microseconds": 5000})


def _quietly(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def _rss(pid: int) -> int:
    """Resident memory of a process and all its children (the model stubs), in bytes."""
    root = psutil.Process(pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _measure(server, model: str, variant: str, opts: perf.PerfSettings, repeats: int) -> dict:
    runs = [_quietly(perf.run, server, model, variant, opts, save=False, sample_metrics=False)
            for _ in range(repeats)]
    rows = [r.df.iloc[0] for r in runs]
    return {"throughput": statistics.median(r[perf.THROUGHPUT] for r in rows),
            "p95_ms": statistics.median(r[perf.P95] for r in rows) / 1000,
            "all_throughputs": [round(float(r[perf.THROUGHPUT]), 2) for r in rows]}


def in_process(repeats: int, batch: int = 8, batches: int = 12) -> dict:
    """The fastest variant's own code, run in this process on the same sample images."""
    code = classifier_module()
    folder = str(settings.model_repository() / "food_classifier" / "1")
    model = code.Food11Classifier(folder, runtime=FASTEST["runtime"])
    encoded = [p.read_bytes() for p in samples.sample_images()]
    work = [[encoded[(i * batch + j) % len(encoded)] for j in range(batch)]
            for i in range(batches)]
    rates = []
    for _ in range(repeats):
        began = time.perf_counter()
        for items in work:
            model.predict(np.stack([code.decode_image(code.to_image_bytes(e)) for e in items]))
        rates.append(batch * batches / (time.perf_counter() - began))
    return {"throughput": statistics.median(rates), "all": [round(r, 2) for r in rates]}


def run(repeats: int = 3, window_ms: int = 3000, out_dir: Path | None = None) -> dict:
    """Measure every figure; returns (and saves) them with pass/miss against the targets."""
    work = Path(tempfile.mkdtemp(prefix="tritonlab-bench-"))
    repo = copy_repository(work / "model_repository")
    os.environ["TRITONLAB_MODEL_REPOSITORY"] = str(repo)
    _quietly(weights.ensure_weights, source=weights.STAND_IN)
    _quietly(captioning.ensure_blip, source=captioning.STAND_IN)
    from . import onnx_export

    onnx_export.export_onnx(repo / "food_classifier" / "1")
    server = LocalTriton(repo, ports=Ports.free(), state_dir=work / "state", quiet=True)
    figures: dict = {"machine": devices.machine(), "repeats": repeats, "window_ms": window_ms,
                     "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "weights": "stand-in" if weights.current()["stand_in"] else "trained"}
    try:
        print("starting Triton ...", flush=True)
        figures["start_s"] = server.start()
        memory_all = _rss(server.recorded()["pid"])
        c8 = perf.PerfSettings(concurrency=[8], measurement_ms=window_ms)

        print("1. baseline vs fastest variant at concurrency 8 ...", flush=True)
        _quietly(deploy, server, configs.classifier_config())
        base = _measure(server, "food_classifier", "baseline", c8, repeats)
        _quietly(deploy, server, configs.classifier_config(**FASTEST))
        fast = _measure(server, "food_classifier", "fastest", c8, repeats)
        figures["baseline_c8"], figures["fastest_c8"] = base, fast

        print("2. serving overhead: the same code in-process ...", flush=True)
        figures["in_process"] = in_process(repeats)

        print("3. config change to ready ...", flush=True)
        reloads = []
        for i in range(repeats):
            cfg = configs.classifier_config(**FASTEST, max_batch_size=16 - (i % 2) * 8)
            reloads.append(_quietly(deploy, server, cfg))
        figures["reload_s"] = statistics.median(reloads)
        figures["restart_s"] = _quietly(server.restart)

        print("5. ensemble ...", flush=True)
        c4 = perf.PerfSettings(concurrency=[4], measurement_ms=window_ms)
        _quietly(deploy, server, configs.captioning_config())
        figures["ensemble_c4"] = _measure(server, "food_captioning", "ensemble", c4, repeats)
        _quietly(deploy, server, configs.captioning_config(
            dynamic_batching={"preferred_batch_size": [4], "max_queue_delay_microseconds": 5000}))
        figures["ensemble_batched_c4"] = _measure(server, "food_captioning", "ensemble batched",
                                                  c4, repeats)
        figures["ensemble_overhead_ms"] = ensemble_overhead(server, repeats)

        print("6. memory ...", flush=True)
        figures["memory_all_models_mib"] = memory_all / 2**20
        one = _rss(server.recorded()["pid"])
        _quietly(deploy, server, configs.classifier_config(**dict(FASTEST, num_threads=1),
                                                           instances=2))
        figures["memory_per_extra_instance_mib"] = (_rss(server.recorded()["pid"]) - one) / 2**20
    finally:
        server.stop()
        os.environ.pop("TRITONLAB_MODEL_REPOSITORY", None)
        shutil.rmtree(work, ignore_errors=True)
    figures["verdicts"] = verdicts(figures)
    print_table(figures)
    out_dir = out_dir or settings.results_dir() / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{figures['date'].replace(':', '').replace('-', '')}.json"
    path.write_text(json.dumps(figures, indent=1, default=float))
    print(f"\nsaved to {path}")
    return figures


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


def verdicts(f: dict) -> list[dict]:
    """Each target with its measured value and whether it is met."""
    speedup = f["fastest_c8"]["throughput"] / f["baseline_c8"]["throughput"]
    p95_ok = f["fastest_c8"]["p95_ms"] <= f["baseline_c8"]["p95_ms"]
    served_share = f["fastest_c8"]["throughput"] / f["in_process"]["throughput"]
    rows = [
        ("fastest vs baseline throughput at c=8", f"{speedup:.2f}x", ">= 3x",
         speedup >= 3),
        ("fastest vs baseline p95 at c=8", f"{f['fastest_c8']['p95_ms']:.0f} vs "
         f"{f['baseline_c8']['p95_ms']:.0f} ms", "no worse", p95_ok),
        ("served / in-process throughput (fastest)", f"{served_share:.0%}", ">= 90%",
         served_share >= 0.9),
        ("reload with changed config (median)", f"{f['reload_s']:.1f} s", "<= 5 s",
         f["reload_s"] <= 5),
        ("full restart", f"{f['restart_s']:.1f} s", "(reported)", None),
        ("ensemble c=4: captioning batched vs not",
         f"{f['ensemble_batched_c4']['throughput']:.1f} vs "
         f"{f['ensemble_c4']['throughput']:.1f} infer/s", "(reported)", None),
        ("ensemble vs two client calls (mean latency)",
         f"{f['ensemble_overhead_ms']['ensemble_ms']:.0f} vs "
         f"{f['ensemble_overhead_ms']['two_calls_ms']:.0f} ms", "(reported)", None),
        ("server RSS, all course models loaded", f"{f['memory_all_models_mib']:.0f} MiB",
         "(reported)", None),
        ("RSS per extra classifier instance", f"{f['memory_per_extra_instance_mib']:.0f} MiB",
         "(reported)", None),
    ]
    return [{"figure": a, "measured": b, "target": c,
             "met": None if d is None else bool(d)} for a, b, c, d in rows]


def print_table(f: dict) -> None:
    print(f"\nmachine: {f['machine']['cores']} cores, {f['machine']['cpu']}; "
          f"{f['repeats']} repeats, {f['window_ms']} ms windows; {f['weights']} weights")
    print(f"{'figure':46} {'measured':28} {'target':10} result")
    for row in f["verdicts"]:
        result = {True: "met", False: "MISSED", None: ""}[row["met"]]
        print(f"{row['figure']:46} {row['measured']:28} {row['target']:10} {result}")
    print(f"absolute: baseline {f['baseline_c8']['throughput']:.1f} infer/s, fastest "
          f"{f['fastest_c8']['throughput']:.1f} infer/s, in-process "
          f"{f['in_process']['throughput']:.1f} images/s")
