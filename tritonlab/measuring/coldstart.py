"""Cold and warm models: how long a (re)load takes, and what the first requests after it cost.

The first request after a load pays for whatever the runtime initialises lazily (thread pools,
allocator growth, a first generate() call). A `model_warmup` block in config.pbtxt makes Triton
send sample requests to every instance *before* it marks the model READY: the load takes longer,
and no client pays for the warm-up.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from tritonclient.grpc import model_config_pb2 as mc

from ..serving import clients
from ..serving.deploy import deploy


def first_requests(server, cfg: mc.ModelConfig, images: list[Path], requests: int = 5,
                   loads: int = 3, label: str = "") -> pd.DataFrame:
    """Load `cfg` (a classifier config) `loads` times; after each load, time its first
    `requests` requests, one image each, one after the other.

    Returns one row per request: variant, load (1..loads), request (1 = first after the load),
    the client's latency in ms, and that load's seconds until READY.
    """
    rows = []
    for load in range(1, loads + 1):
        if load == 1:  # write the config (and show what changed), then load it
            load_s = deploy(server, cfg)
        else:  # the same config again: Triton reloads only after an unload
            server.unload_model(cfg.name)
            load_s = server.reload_model(cfg.name, config=cfg)
        for i in range(requests):
            began = time.perf_counter()
            clients.classify(server.http_url, [images[i % len(images)]], model=cfg.name)
            rows.append({"variant": label or cfg.name, "load": load, "request": i + 1,
                         "latency (ms)": (time.perf_counter() - began) * 1000,
                         "load (s)": load_s})
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per variant, medians over its loads: load time, first request's latency, and the
    latency of the requests after it."""
    out = []
    for variant, group in df.groupby("variant", sort=False):
        per_load = group.groupby("load")
        out.append({
            "variant": variant, "loads": per_load.ngroups,
            "load until READY (s)": per_load["load (s)"].first().median(),
            "first request (ms)": group.loc[group["request"] == 1, "latency (ms)"].median(),
            "later requests (ms)": group.loc[group["request"] > 1, "latency (ms)"].median()})
    return pd.DataFrame(out).round(2)


def explain(df: pd.DataFrame, cold: str, warm: str) -> str:
    """The cold-against-warm story, told from the measured medians; no verdict on fewer than
    three loads of each."""
    table = summary(df).set_index("variant")
    c, w = table.loc[cold], table.loc[warm]
    first_c, first_w = c["first request (ms)"], w["first request (ms)"]
    later = c["later requests (ms)"]
    load_change = w["load until READY (s)"] - c["load until READY (s)"]
    loads = int(min(c["loads"], w["loads"]))
    lines = [f"Medians over {loads} loads each. Without warm-up the first request took "
             f"{first_c:.0f} ms against {later:.0f} ms for the ones after it; with warm-up, "
             f"{first_w:.0f} ms. Load until READY: {c['load until READY (s)']:.2f} s cold, "
             f"{w['load until READY (s)']:.2f} s with warm-up ({load_change:+.2f} s)."]
    if loads < 3:
        lines.append("Too few loads to call the difference: run the cell again with more loads.")
    elif first_c - first_w > max(5.0, 0.2 * later):
        lines.append(f"Warm-up took {first_c - first_w:.0f} ms off the first request.")
    else:
        lines.append(f"The first request cost about the same either way ({first_c:.0f} and "
                     f"{first_w:.0f} ms): on this machine the first request does little that "
                     "the later ones do not, so warm-up buys little here.")
    return "\n".join(lines)
