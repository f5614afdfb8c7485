"""Where an image's time goes inside the classifier, stage by stage, measured in-process.

The served model's own functions (from `model_repository/food_classifier/1/model.py`) are timed
one stage at a time on the sample JPEGs: decoding and resizing, normalising into the network's
float layout, and the network itself (with the softmax). No Triton is involved, so this is the
floor that serving can approach, and it shows which stage a faster runtime leaves dominant.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pandas as pd

from ..assets import samples
from ..assets.repository import decoding, model_dir, network

STAGES = ("decode + resize", "normalise", "network + softmax")


def _per_image_ms(fn, images: int, repeats: int) -> float:
    fn()  # warm-up: first calls allocate and (for ONNX Runtime) plan memory
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times) / images * 1000


def measure(runtimes=("torch", "onnxruntime"), batch: int = 8, repeats: int = 5,
            num_threads: int = 0, folder=None) -> pd.DataFrame:
    """Milliseconds per image for each stage and runtime, median of `repeats` batches.

    `folder` holds the weights (and food11.onnx): the served model's version folder by default.
    """
    dec, net = decoding(), network()
    folder = str(folder or model_dir("food_classifier"))
    encoded = [p.read_bytes() for p in samples.sample_images()]
    encoded = [encoded[i % len(encoded)] for i in range(batch)]
    images = np.stack([dec.decode_image(dec.to_image_bytes(e)) for e in encoded])
    decode_ms = _per_image_ms(
        lambda: [dec.decode_image(dec.to_image_bytes(e)) for e in encoded], batch, repeats)
    rows = []
    for runtime in runtimes:
        model = net.Food11Classifier(folder, runtime=runtime, num_threads=num_threads)
        normalise, network_step = _stage_functions(net, model, images)
        for stage, ms in zip(STAGES, (decode_ms, _per_image_ms(normalise, batch, repeats),
                                      _per_image_ms(network_step, batch, repeats))):
            rows.append({"runtime": runtime, "stage": stage, "ms per image": ms})
    return pd.DataFrame(rows)


def _stage_functions(net, model, images: np.ndarray):
    """The normalising step and the network step of `model`, each as a call without arguments."""
    if model.runtime == "onnxruntime":
        x = net.normalise(images)
        return (lambda: net.normalise(images),
                lambda: model.session.run(None, {model.input_name: x}))
    import torch

    x = model.preprocess(images)

    def network():
        with torch.inference_mode():
            return torch.softmax(model.net(x), dim=1)

    return (lambda: model.preprocess(images)), network


def summary(df: pd.DataFrame) -> str:
    """Per runtime: images per second in-process and the share of each stage."""
    lines = []
    for runtime, group in df.groupby("runtime", sort=False):
        total = group["ms per image"].sum()
        shares = ", ".join(
            f"{r['stage']} {r['ms per image']:.1f} ms ({r['ms per image'] / total:.0%})"
            for _, r in group.iterrows())
        lines.append(f"{runtime}: {total:.1f} ms per image = {1000 / total:.0f} images/s "
                     f"in-process; {shares}")
    return "\n".join(lines)
