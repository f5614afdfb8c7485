"""The captioning model measured on its own: its size, load time and memory, and its code run
in-process on the same batches as served (for the served/in-process ratio and the profile).

Figures come from the full-size model only (real BLIP-base or its stand-in of the same size):
`describe_weights` says which, and a tiny stand-in is refused, since its timings mean nothing.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pandas as pd
import psutil

from ..assets import blip, samples
from ..assets.repository import model_dir
from . import processes

MODEL = "conditional_captioning"

#: Food-11's labels, in the order the in-process runs cycle through them: prompts of 1 to 3
#: label tokens, mixed in every batch, as the classifier's labels are in the ensemble.
LABELS = ("Bread", "Dairy product", "Dessert", "Egg", "Fried food", "Meat", "Noodles/Pasta",
          "Rice", "Seafood", "Soup", "Vegetable/Fruit")


def weights_folder(repository: Path | None = None) -> Path:
    """The captioner's version folder, where its BLIP weights lie."""
    return model_dir(MODEL, repository=repository)


def describe_weights(repository: Path | None = None) -> dict:
    """What the captioner serves: source, stand-in or not, size ('base', 'tiny' or 'real'),
    parameters (millions, read from the safetensors header without loading) and MiB on disk.
    Raises ValueError for the tiny stand-in, whose timings mean nothing."""
    from safetensors import safe_open

    folder = weights_folder(repository)
    meta = blip.current(folder)
    if meta is None:
        raise FileNotFoundError(f"no BLIP weights in {folder}: run `make install`")
    if meta.get("size") == "tiny":
        raise ValueError("the tiny BLIP stand-in is served: its timings mean nothing. Build the "
                         "full-size one: `python -m tritonlab prepare --source stand-in`")
    files = sorted((folder / blip.code().WEIGHTS_FOLDER).glob("*.safetensors"))
    params = 0
    for path in files:
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                count = 1
                for dim in f.get_slice(key).get_shape():
                    count *= dim
                params += count
    on_disk = sum(p.stat().st_size for p in (folder / blip.code().WEIGHTS_FOLDER).iterdir())
    kind = "stand-in (BLIP-base's sizes, random weights)" if meta.get("stand_in") else "real"
    return {"source": meta["source"], "stand_in": bool(meta.get("stand_in")),
            "size": meta.get("size", "real"), "weights": kind,
            "parameters_m": round(params / 1e6, 1), "disk_mib": round(on_disk / 2**20)}


def footprint(server, instances: int = 1) -> dict:
    """Load time (unload, then load with its warm-up, as after a config change that needs new
    processes) and resident memory per instance of the served captioner, in MiB. Memory needs
    the server's process (the embedded server): elsewhere it is None, with the reason."""
    server.unload_model(MODEL)
    load_s = server.reload_model(MODEL)
    record = getattr(server, "recorded", lambda: None)()
    if not record:
        return {"load_s": round(load_s, 1), "rss_mib_per_instance": None,
                "why_no_rss": "the server's processes are not on this machine (Docker mode)"}
    rss = processes.model_rss(record["pid"], MODEL, instances) / instances / 2**20
    return {"load_s": round(load_s, 1), "rss_mib_per_instance": round(rss)}


#: The GEMM that dominates the vision encoder: a batch of 4 images' 577 tokens through the
#: first layer of an MLP block of ViT-B (768 -> 3072).
PEAK_SHAPE = (4 * 577, 768, 3072)


def gemm_peak_gflops(repeats: int = 20) -> float:
    """float32 matrix-multiply GFLOP/s on this process's threads, at PEAK_SHAPE: about as fast
    as this CPU multiplies float32 matrices, the ceiling of a compute-bound part's speed."""
    import torch

    m, k, n = PEAK_SHAPE
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    began = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * m * k * n * repeats / (time.perf_counter() - began) / 1e9


def count_flops(captioner, images: list, labels: list) -> dict[str, float]:
    """GFLOP per image of each part of one `caption()` call, counted by torch's FlopCounterMode
    (matrix multiplies, convolutions and attention; the elementwise rest is not counted).

    Fused CPU attention is counted with torch's own formula for it, which FlopCounterMode does
    not register for the CPU kernel. Parts are those of `captioner.last_timing`."""
    import torch
    from torch.utils import flop_counter

    aten = torch.ops.aten
    def sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:  # shapes, not tensors
        return flop_counter.sdpa_flop_count(query, key, value)

    extra = {aten._scaled_dot_product_flash_attention_for_cpu: sdpa}
    parts: dict[str, float] = {}
    hooks = {"vision encoder": "_encode", "text decoder": "_decode", "generate": "_generate"}
    for part, method in hooks.items():
        original = getattr(captioner, method)

        def counted(*args, _original=original, _part=part, **kwargs):
            with flop_counter.FlopCounterMode(display=False, custom_mapping=extra) as counter:
                result = _original(*args, **kwargs)
            parts[_part] = parts.get(_part, 0.0) + counter.get_total_flops()
            return result

        setattr(captioner, method, counted)
    try:
        captioner.caption(images, labels)
    finally:
        for method in hooks.values():
            delattr(captioner, method)  # back to the class's own methods
    return {part: round(total / len(images) / 1e9, 1) for part, total in parts.items()}


def _measure(captioner, encoded: list, batch: int, batches: int, repeats: int,
             flops: bool) -> dict:
    """One `in_process` measurement in the worker: after one warm-up caption, as Triton's
    model_warmup gives a served instance, `repeats` times `batches` batches of `batch` images."""
    import torch

    images = [captioner.decode(encoded[i % len(encoded)]) for i in range(batch)]
    labels = [LABELS[i % len(LABELS)] for i in range(batch)]
    captioner.caption(images[:1], labels[:1])
    rates, timings = [], []
    for _ in range(repeats):
        began = time.perf_counter()
        for _ in range(batches):
            captions = captioner.caption(images, labels)
            timings.append(dict(captioner.last_timing))
        rates.append(batch * batches / (time.perf_counter() - began))
    counted = {}
    if flops:  # one more, untimed, caption under torch's FLOP counter
        # of one image: the work per image hardly depends on the batch (a batch pads its prompts
        # to the longest: 23.2 decoder GFLOP per image at batch 8 against 22.8 alone, the
        # encoder's 111.0 in both, here), and the counter's pass over a batch of 8 took 20 s
        counted = {"gflop_per_image": count_flops(captioner, images[:1], labels[:1]),
                   "gemm_peak_gflops": round(gemm_peak_gflops(), 1)}
    return {"rates": rates, "timings": timings, "threads": torch.get_num_threads(),
            "captions": captions, **counted}


def _worker(folder: str, variant: dict, threads: int, jobs, out) -> None:
    """The worker process: loads the captioner once, then measures each job from `jobs`
    ((threads, batch, batches, repeats, flops); None ends it) and puts the result on `out`.
    It ends by itself once the process that started it is gone (a kernel killed on restart
    runs no clean-up)."""
    import multiprocessing as mp
    import queue

    import torch

    code = blip.code(Path(folder).parent.parent)
    keys = ("strategy", "vision_batch", "attention", "dtype", "max_new_tokens")
    captioner = code.Captioner(folder, num_threads=threads,
                               **{k: v for k, v in variant.items() if k in keys})
    encoded = [p.read_bytes() for p in samples.sample_images()]
    parent = mp.parent_process()
    while True:
        try:
            job = jobs.get(timeout=2)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return
            continue
        if job is None:
            return
        threads, *work = job
        torch.set_num_threads(threads)
        out.put(_measure(captioner, encoded, *work))


#: The in-process workers, one per variant and weights folder: (process, jobs, results). Each
#: is kept for the next `in_process` call of its variant, since starting one (importing torch,
#: loading BLIP, its first caption) took 15-20 s here, and notebook 10 measures one variant
#: four times. They end with the Python process that started them, or `stop_workers()`.
_WORKERS: dict[tuple, tuple] = {}


def stop_workers() -> int:
    """End every in-process worker. Returns the resident memory they held just before, in
    bytes (psutil's RSS; 0 when none was running): each holds a captioner and torch."""
    held = 0
    while _WORKERS:
        proc, jobs, _ = _WORKERS.popitem()[1]
        try:
            held += psutil.Process(proc.pid).memory_info().rss
        except psutil.Error:  # ended already
            pass
        jobs.put(None)
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(10)
    return held


def in_process(variant: str = "fastest", threads: int | None = None, batch: int = 8,
               batches: int = 1, repeats: int = 1, repository: Path | None = None,
               flops: bool = False) -> dict:
    """The captioner's own code outside Triton, in a process of its own as a model instance
    is: one variant of CAPTIONING_VARIANTS, `threads` threads (default: every core, as
    served), `batches` batches of `batch` sample images with mixed labels, `repeats` times.
    The process is kept for the next call of the same variant (`stop_workers` ends it);
    each call starts with one warm-up caption at its own thread count.

    Returns the worker's process id, images/s (median over the repeats, and each), the images
    timed, seconds per image in each part of the model (vision encoder and text decoder, or
    'generate' for variants that run BLIP's generate() whole), the captions of the last
    batch, and with `flops`
    GFLOP per image in each part (`count_flops`, one more untimed caption of one image) and
    this process's float32 GEMM GFLOP/s (`gemm_peak_gflops`), both None without. Takes about
    a second per image on 2 cores for the float32 variants, plus 15-20 s to start the
    variant's process the first time. RuntimeError when the worker fails (its error is
    printed); a failed or interrupted call ends the worker, and the next call starts afresh.
    """
    import multiprocessing as mp

    from ..serving import configs, devices

    settings_ = dict(configs.CAPTIONING_VARIANTS[variant])
    settings_.pop("dynamic_batching", None)
    folder = str(weights_folder(repository))
    threads = threads or devices.usable_cores()
    key = (folder, tuple(sorted(settings_.items())))
    if key in _WORKERS and not _WORKERS[key][0].is_alive():
        del _WORKERS[key]
    if key not in _WORKERS:
        ctx = mp.get_context("spawn")
        jobs, out = ctx.Queue(), ctx.Queue()
        proc = ctx.Process(target=_worker, daemon=True,
                           args=(folder, settings_, threads, jobs, out))
        proc.start()
        _WORKERS[key] = (proc, jobs, out)
    proc, jobs, out = _WORKERS[key]
    jobs.put((threads, batch, batches, repeats, flops))
    try:
        result = processes.answer([proc], out)
    except BaseException:  # failed, or interrupted mid-measurement: its state is unknown
        del _WORKERS[key]
        proc.kill()
        raise
    images = batch * batches * repeats
    parts = {}
    for timing in result["timings"]:
        for part, seconds in timing.items():
            parts[part] = parts.get(part, 0.0) + seconds
    return {"variant": variant, "worker": proc.pid, "threads": result["threads"],
            "batch": batch, "images": images,
            "images_per_s": statistics.median(result["rates"]),
            "all": [round(r, 3) for r in result["rates"]],
            "seconds_per_image": {k: round(v / images, 3) for k, v in parts.items()},
            "gflop_per_image": result.get("gflop_per_image"),
            "gemm_peak_gflops": result.get("gemm_peak_gflops"),
            "captions": result["captions"]}


def profile_table(runs: list[dict]) -> pd.DataFrame:
    """One row per `in_process` result: variant, batch, threads, images/s, and seconds per
    image in each part of the model."""
    rows = []
    for r in runs:
        row = {"variant": r["variant"], "batch": r["batch"], "threads": r["threads"],
               "images/s": round(r["images_per_s"], 3)}
        row.update({f"{part} (s/image)": s for part, s in r["seconds_per_image"].items()})
        rows.append(row)
    return pd.DataFrame(rows)


def roofline(run: dict) -> pd.DataFrame:
    """What limits each part of the model, from one `in_process` result: seconds and GFLOP per
    image, the GFLOP/s that makes, and its share of the float32 GEMM peak measured in the same
    process. A part near 100 % is compute-bound: only less arithmetic (smaller numbers, fewer
    tokens) makes it faster; a part far below is bound by something else (reading weights from
    memory, Python, small matrices). Raises ValueError for a run measured without
    `flops=True`."""
    peak = run["gemm_peak_gflops"]
    if peak is None:
        raise ValueError("this in_process run counted no FLOPs: run it with flops=True")
    rows = []
    for part, seconds in run["seconds_per_image"].items():
        gflop = run["gflop_per_image"].get(part)
        rate = gflop / seconds if gflop and seconds > 0 else None
        rows.append({"part": part, "s per image": seconds, "GFLOP per image": gflop,
                     "GFLOP/s": None if rate is None else round(rate),
                     "share of GEMM peak": None if rate is None else f"{rate / peak:.0%}",
                     "float32 GEMM peak (GFLOP/s)": round(peak)})
    return pd.DataFrame(rows)


#: Fewer images timed than this on either side and `explain_batching` gives figures only.
MIN_IMAGES = 4


def explain_batching(at_one: dict, at_many: dict) -> str:
    """What batching did to each part of the model, from two `in_process` results of the same
    variant (batch 1 and a larger batch): the ratio per part, and which part it helped; no
    verdict when either side timed fewer than MIN_IMAGES images."""
    counts = (at_one["images"], at_many["images"])
    lines = []
    for part, alone in at_one["seconds_per_image"].items():
        many = at_many["seconds_per_image"].get(part)
        if many is None or alone <= 0 or many <= 0:
            continue
        ratio = alone / many
        verdict = (f"{counts[0]} and {counts[1]} images timed, too few to call" if
                   min(counts) < MIN_IMAGES else
                   "cheaper per image in a batch" if ratio >= 1.2 else
                   "dearer per image in a batch" if ratio <= 1 / 1.2 else
                   "about the same per image either way")
        lines.append(f"{part}: {alone:.2f} s per image alone, {many:.2f} in a batch of "
                     f"{at_many['batch']} ({ratio:.1f}x): {verdict}")
    return "\n".join(lines) or "no part was timed in both runs"
