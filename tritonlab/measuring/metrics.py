"""Triton's Prometheus metrics (:8002), sampled during a run: utilization, queue and compute time.

This is what the public course asks students to screenshot from nvtop; here it is sampled in a
background thread while perf_analyzer runs, and plotted beside the perf results.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import pandas as pd
import requests


def parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text format as (name, labels, value) triples, read by the Prometheus client
    library's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if family.type == "counter":  # the parser names counter samples <name>_total
                if name.endswith("_created"):
                    continue
                name = family.name if name == family.name + "_total" else name
            out.append((name, dict(sample.labels), float(sample.value)))
    return out


#: Column of the mean utilization over the GPUs; each GPU's own column is this name followed by
#: the GPU's short UUID (see `gpu_columns`).
GPU_UTILIZATION = "gpu utilization (%)"
_PER_GPU = "gpu_utilization:"  # snapshot key prefix, followed by the GPU's UUID


def snapshot(samples: list[tuple[str, dict[str, str], float]], model: str | None) -> dict:
    """The figures the course plots, from one scrape: sums over a model's versions, the mean
    GPU utilization and each GPU's own (key `gpu_utilization:<gpu_uuid>`: Triton labels its
    per-GPU gauges, such as nv_gpu_utilization, with `gpu_uuid`)."""
    model_sum: dict[str, float] = defaultdict(float)
    gpu_util, snap = [], {}
    for name, labels, value in samples:
        if name == "nv_cpu_utilization":
            snap["cpu_utilization"] = value
        elif name == "nv_cpu_memory_used_bytes":
            snap["cpu_memory_used_bytes"] = value
        elif name == "nv_gpu_utilization":
            gpu_util.append(value)
            if labels.get("gpu_uuid"):
                snap[_PER_GPU + labels["gpu_uuid"]] = value
        elif name.startswith("nv_inference_") and (model is None or labels.get("model") == model):
            model_sum[name] += value
    if gpu_util:
        snap["gpu_utilization"] = sum(gpu_util) / len(gpu_util)
    for key in ("nv_inference_request_success", "nv_inference_request_failure",
                "nv_inference_count", "nv_inference_exec_count", "nv_inference_queue_duration_us",
                "nv_inference_compute_infer_duration_us", "nv_inference_request_duration_us"):
        snap[key.removeprefix("nv_inference_")] = model_sum.get(key, 0.0)
    return snap


def read(url: str, model: str | None, timeout: float = 5.0) -> dict:
    """One scrape of Triton's metrics endpoint `url` as a `snapshot` for `model`. Raises
    requests.RequestException when the endpoint cannot be read."""
    reply = requests.get(url, timeout=timeout)
    reply.raise_for_status()
    return snapshot(parse(reply.text), model)


class MetricsSampler:
    """Scrape the metrics endpoint every `interval` seconds in a background thread."""

    def __init__(self, url: str, model: str | None = None, interval: float = 0.5) -> None:
        self.url, self.model, self.interval = url, model, interval
        self.samples: list[dict] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def _scrape(self) -> None:
        try:
            snap = read(self.url, self.model, timeout=2)
        except requests.RequestException:
            self.errors += 1
            return
        snap["time (s)"] = time.monotonic() - self._t0
        self.samples.append(snap)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._scrape()
            self._stop.wait(self.interval)

    def start(self, t0: float | None = None) -> MetricsSampler:
        """Start sampling; sample times are seconds since `t0` (a `time.monotonic()` reading;
        default: now), so a caller can time its own phases on the same clock."""
        self._t0 = time.monotonic() if t0 is None else t0
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="metrics-sampler")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._scrape()  # a last sample, so the final interval is counted

    def __enter__(self) -> MetricsSampler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def frame(self) -> pd.DataFrame:
        """One row per interval between samples: utilization and per-request times."""
        return to_frame(self.samples)


def gpu_columns(frame: pd.DataFrame) -> list[str]:
    """The per-GPU utilization columns of a `to_frame` table (one per GPU, named
    'gpu utilization (%) GPU-<first 8 hex digits of its UUID>', as `nvidia-smi -L` shows it);
    empty on a machine without GPUs and for runs saved before they were recorded."""
    return [c for c in frame.columns if c.startswith(GPU_UTILIZATION + " ")]


def _short_uuids(uuids: list[str]) -> dict[str, str]:
    short = {u: u[:12] for u in uuids}  # 'GPU-' and 8 hex digits
    return short if len(set(short.values())) == len(uuids) else {u: u for u in uuids}


def to_frame(samples: list[dict]) -> pd.DataFrame:
    """Turn cumulative counters into per-interval rates and per-request averages: one row per
    interval, at its end ('time (s)'); utilization in %, the mean over the GPUs and each GPU's
    own (`gpu_columns`), when Triton reported GPUs."""
    if len(samples) < 2:
        return pd.DataFrame()
    raw = pd.DataFrame(samples)
    d = raw.diff().iloc[1:]
    out = pd.DataFrame({"time (s)": raw["time (s)"].iloc[1:]})
    done = d["request_success"].where(d["request_success"] > 0)
    out["requests/s"] = d["request_success"] / d["time (s)"]
    out["failed requests"] = d["request_failure"]
    out["queue per request (ms)"] = d["queue_duration_us"] / done / 1000
    out["compute per request (ms)"] = d["compute_infer_duration_us"] / done / 1000
    execs = d["exec_count"].where(d["exec_count"] > 0)
    out["mean batch size"] = d["count"] / execs
    if "cpu_utilization" in raw:
        out["cpu utilization (%)"] = raw["cpu_utilization"].iloc[1:] * 100
    if "gpu_utilization" in raw:
        out[GPU_UTILIZATION] = raw["gpu_utilization"].iloc[1:] * 100
    uuids = sorted(c.removeprefix(_PER_GPU) for c in raw.columns if c.startswith(_PER_GPU))
    for uuid, short in _short_uuids(uuids).items():
        out[f"{GPU_UTILIZATION} {short}"] = raw[_PER_GPU + uuid].iloc[1:] * 100
    if "cpu_memory_used_bytes" in raw:
        out["cpu memory used (GiB)"] = raw["cpu_memory_used_bytes"].iloc[1:] / 2**30
    return out.reset_index(drop=True)
