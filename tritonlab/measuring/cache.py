"""Triton's response cache, measured at the client and read from Triton's own counters.

Triton looks a request up by a hash of its model, version and input tensors (names, shapes,
data types and bytes); on a hit it returns the stored outputs without queueing or running the
model (Triton's "Response Cache" guide). So the key is the bytes sent, not the picture:
`with_comment` gives the same photo with other bytes, as an app that rewrites a photo's
metadata would, and that is a miss.

Every hit or miss this module reports is one Triton counted (the model's statistics, read
before and after each request), never one assumed from the order of the requests.
"""

from __future__ import annotations

import statistics
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import requests

from ..common import poll_until
from ..serving import clients
from . import metrics

#: Fewer requests of a kind than this give a median but no verdict (see `explain`).
MIN_REQUESTS = 5

#: How often Triton refreshes the cache's gauges on its metrics endpoint: its
#: --metrics-interval-ms, 2000 by default (seen on server 2.51: read at once after a request,
#: they still said 0).
METRICS_INTERVAL_S = 2.0


def with_comment(jpeg: bytes, text: str) -> bytes:
    """The same JPEG with a comment segment (marker 0xFFFE) right after its start marker.

    The pixels, and so the model's answer, are unchanged; the bytes, and so the request's cache
    key, are not. Raises ValueError when `jpeg` is not a JPEG or `text` is too long for one
    segment (65,533 bytes once encoded as UTF-8)."""
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG (it does not start with the SOI marker FF D8)")
    body = text.encode()
    if len(body) > 65533:
        raise ValueError(f"a JPEG comment holds at most 65,533 bytes, not {len(body)}")
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def counters(url: str, model: str) -> dict[str, float]:
    """What Triton has counted for `model` since it loaded (its statistics API over HTTP).

    Keys: 'requests' (successful), 'executions' (model runs: a batch counts once), 'cache
    hits', 'cache misses', and their total times 'cache hit ms' (looking a response up) and
    'cache miss ms' (looking up, then storing the computed one). Raises
    tritonclient.utils.InferenceServerException when the model is not loaded."""
    stats = clients.model_stats(url, model)
    inference = stats.get("inference_stats", {})

    def part(name: str) -> tuple[float, float]:
        item = inference.get(name, {})
        return float(item.get("count", 0)), float(item.get("ns", 0)) / 1e6

    hits, hit_ms = part("cache_hit")
    misses, miss_ms = part("cache_miss")
    return {"requests": part("success")[0], "executions": float(stats.get("execution_count", 0)),
            "cache hits": hits, "cache hit ms": hit_ms,
            "cache misses": misses, "cache miss ms": miss_ms}


def _change(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before[key] for key in after}


def _client_for(model: str) -> Callable[[str, list[bytes]], list]:
    """The course's client for `model`: the ensemble answers with captions."""
    if model == "food_captioning":
        return lambda url, images: clients.caption(url, images, model=model)
    return lambda url, images: clients.classify(url, images, model=model)


def _answer(result) -> str:
    text = f"{result.label} ({result.probability:.3f})"
    caption = getattr(result, "caption", None)
    return f"{text}: {caption}" if caption is not None else text


#: How long `timed_request` waits for Triton's statistics to count a request it answered.
STATISTICS_WAIT_S = 2.0


def _executions(url: str, models: Sequence[str]) -> float:
    return sum(counters(url, m)["executions"] for m in models)


def timed_request(url: str, model: str, image: bytes,
                  executed: Sequence[str] | None = None, failures: bool = False) -> dict:
    """Send one image in one request; its latency at the client and what Triton counted for it.

    Returns 'latency (ms)', 'answer' (label and probability, and the caption for the
    ensemble), 'cache' ('hit', 'miss' or 'not cached', from the change in Triton's counters)
    and 'executions': the runs of the models named in `executed` (default: `model`; for an
    ensemble, name its steps) that the request caused. A failed request raises Triton's
    InferenceServerException or clients.EmptyAnswer; with `failures`, its 'answer' is the
    error's status and message instead."""
    from tritonclient.utils import InferenceServerException

    ask = _client_for(model)
    executed = list(executed or [model])
    before, runs = counters(url, model), _executions(url, executed)
    start, failed = time.perf_counter(), True
    try:
        answer = _answer(ask(url, [image])[0])
        failed = False
    except InferenceServerException as exc:
        if not failures:
            raise
        answer = f"error {exc.status()}: {exc.message()}"
    except clients.EmptyAnswer as exc:
        if not failures:
            raise
        answer = f"EmptyAnswer: {exc}"
    latency_ms = (time.perf_counter() - start) * 1000

    def counted() -> tuple[dict[str, float], float] | None:
        """Triton's counters once they include this request: it counts the request, the
        cache's verdict and the model's execution only after the answer has left, so a reading
        right after it may miss them. A successful request that was not a cache hit ran the
        model at least once."""
        change, ran = _change(before, counters(url, model)), _executions(url, executed) - runs
        done = failed or (change["requests"] >= 1 and (change["cache hits"] or ran >= 1))
        return (change, ran) if done else None

    try:
        change, ran = poll_until(counted, timeout=STATISTICS_WAIT_S, interval=0.02,
                                 what="Triton counting the request")
    except TimeoutError:  # counted late or never (a failure): report what Triton has now
        change, ran = _change(before, counters(url, model)), _executions(url, executed) - runs
    cache = ("hit" if change["cache hits"] else "miss" if change["cache misses"]
             else "not cached")
    return {"latency (ms)": latency_ms, "answer": answer, "cache": cache,
            "executions": int(ran)}


def repeat_request(url: str, model: str, data: bytes, times: int = 2) -> pd.DataFrame:
    """Send the same bytes `times` times and record each outcome, failures included: one row per
    request with 'latency (ms)', 'cache' as Triton counted it and 'outcome' (the answer, or
    the error's status and message). Shows what the cache does with a request that fails."""
    rows = [timed_request(url, model, data, failures=True) for _ in range(times)]
    return pd.DataFrame([{"request": n, "latency (ms)": row["latency (ms)"],
                          "cache": row["cache"], "outcome": row["answer"]}
                         for n, row in enumerate(rows, start=1)])


def hit_and_miss(url: str, model: str, images: Sequence[Path | bytes], rounds: int = 2,
                 executed: Sequence[str] | None = None, progress: bool = True) -> pd.DataFrame:
    """For each image and round: a request with bytes the server has never seen (the image with
    a new JPEG comment: `with_comment`), then the very same bytes again.

    One row per request: 'image', 'round', 'sent' ('new bytes' or 'same bytes again'),
    'latency (ms)' at the client, 'cache' as Triton counted it, 'executions' of the models in
    `executed` it caused (see `timed_request`), 'answer', and 'same answer' (the repeat's
    answer equals the first's). With the cache off every request is 'not cached'. Needs JPEG
    images (ValueError otherwise)."""
    from tqdm.auto import tqdm

    rows = []
    stamp = time.time_ns()  # new bytes on every call, even after a server restart
    jobs = [(item, r) for r in range(rounds) for item in images]
    for item, r in tqdm(jobs, desc=f"{model}: new bytes, then the same again", unit="pair",
                        disable=not progress):
        raw = Path(item).read_bytes() if isinstance(item, (str, Path)) else bytes(item)
        name = Path(item).name if isinstance(item, (str, Path)) else f"image {len(rows) // 2}"
        fresh = with_comment(raw, f"tritonlab {stamp} {name} round {r}")
        first = timed_request(url, model, fresh, executed)
        again = timed_request(url, model, fresh, executed)
        for sent, row in (("new bytes", first), ("same bytes again", again)):
            rows.append({"image": name, "round": r, "sent": sent, **row,
                         "same answer": row["answer"] == first["answer"]})
    return pd.DataFrame(rows)


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per kind of request ('sent' and the cache's verdict): how many, and the median, lowest
    and highest latency at the client (ms)."""
    grouped = frame.groupby(["sent", "cache"], sort=False)["latency (ms)"]
    out = grouped.agg(requests="count", median="median", lowest="min", highest="max")
    return out.rename(columns={c: f"{c} (ms)" for c in ("median", "lowest", "highest")}).round(2)


def explain(frame: pd.DataFrame) -> str:
    """Hits against misses in words, from the medians of `hit_and_miss`'s table; with fewer than
    MIN_REQUESTS of either it gives the figures and says they are too few to compare."""
    hits = frame.loc[frame["cache"] == "hit", "latency (ms)"].tolist()
    misses = frame.loc[frame["cache"] == "miss", "latency (ms)"].tolist()
    if not hits or not misses:
        seen = ", ".join(sorted(set(frame["cache"])))
        return (f"Triton counted no {'hit' if not hits else 'miss'} (it counted: {seen}): is "
                "the cache on in the server and in the model's config?")
    hit_ms, miss_ms = statistics.median(hits), statistics.median(misses)
    text = (f"{len(misses)} misses took a median {miss_ms:.1f} ms at the client, {len(hits)} hits "
            f"{hit_ms:.1f} ms")
    if min(len(hits), len(misses)) < MIN_REQUESTS:
        return text + f": too few requests (under {MIN_REQUESTS} of a kind) to compare."
    wrong = int((~frame["same answer"]).sum())
    same = ("every hit gave the answer its miss had computed" if not wrong
            else f"{wrong} repeats gave another answer than their first request")
    return (text + f": a hit took {hit_ms / miss_ms:.0%} of a miss's time ({miss_ms / hit_ms:.0f}x "
            f"less), and {same}.")


def cache_metrics(metrics_url: str, settle: bool = True) -> pd.DataFrame:
    """The `local` cache's own gauges on Triton's metrics endpoint (:8002), for the whole server
    (every model together; server 2.51 reports no per-model cache family there): one row per
    gauge, 'metric' and 'value' (counts; `nv_cache_util` a share from 0 to 1; the durations in
    microseconds). Triton refreshes them every METRICS_INTERVAL_S: with `settle` this waits that
    long first, so they include the requests just answered. Empty when the server runs without
    a response cache. Raises requests.RequestException when the endpoint cannot be read."""
    if settle:
        time.sleep(METRICS_INTERVAL_S + 0.2)
    reply = requests.get(metrics_url, timeout=5)
    reply.raise_for_status()
    rows = [{"metric": name, "value": value}
            for name, _, value in metrics.parse(reply.text) if name.startswith("nv_cache")]
    return pd.DataFrame(rows, columns=["metric", "value"])


def hit_share(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Between two `counters` readings: requests, cache hits and misses, the share of requests
    that hit (0 to 1; NaN when nothing was looked up) and the model's executions."""
    change = _change(before, after)
    looked_up = change["cache hits"] + change["cache misses"]
    return {"requests": change["requests"], "cache hits": change["cache hits"],
            "cache misses": change["cache misses"],
            "hit share": change["cache hits"] / looked_up if looked_up else float("nan"),
            "executions": change["executions"]}


def expected_latency(hit_ms: float, miss_ms: float, share: float) -> float:
    """Mean latency (ms) when a share (0 to 1) of requests hit: share*hit + (1-share)*miss.
    A model, not a measurement: it ignores queueing, which hits shorten for misses too."""
    if not 0 <= share <= 1:
        raise ValueError(f"a hit share is between 0 and 1, not {share}")
    return share * hit_ms + (1 - share) * miss_ms


def inside_the_server(url: str, model: str, table: pd.DataFrame | None = None) -> str:
    """Triton's own time per hit and per miss for `model` since it loaded (`counters`), beside
    the median hit at the client in `table` (`hit_and_miss`'s), when given."""
    counted = counters(url, model)
    if not counted["cache hits"] or not counted["cache misses"]:
        return (f"Triton counted {counted['cache hits']:.0f} hits and "
                f"{counted['cache misses']:.0f} misses for {model}: nothing to compare yet.")
    text = (f"inside the server: {counted['cache hit ms'] / counted['cache hits'] * 1000:.0f} us "
            f"per hit (the lookup), {counted['cache miss ms'] / counted['cache misses'] * 1000:.0f}"
            f" us per miss (the lookup, then storing the answer), over "
            f"{counted['cache hits']:.0f} hits and {counted['cache misses']:.0f} misses")
    if table is not None and (table["cache"] == "hit").any():
        hit_ms = table.loc[table["cache"] == "hit", "latency (ms)"].median()
        text += (f"; at the client a hit took a median {hit_ms:.2f} ms: the rest is the trip "
                 "over HTTP, (de)serialising the tensors and the client's own Python")
    return text
