"""How many replicas, on paper: from one replica's measured throughput and p95 latency, the
replicas a stated traffic needs and the autoscaler's target. A calculation, not a measurement.

The inputs are the course's own saved perf runs (`results.table()`): the classifier's variants
of this course run (notebooks 02 to 06) and the captioning ensemble (notebook 10). For each, the
*operating point* is the concurrency level with the highest throughput whose p95 latency kept
the budget: what one replica of this machine served while meeting it.

The arithmetic, shown with every row:
* requests per second = uploads per minute / 60 (one upload is one request: the API sends one
  image to the classifier, or to the captioning ensemble, per upload);
* one replica is planned at `utilization` of its measured throughput (a choice, not a
  measurement: room for bursts and for the minutes a new replica takes to start and load);
* replicas = ceil(requests per second / (throughput x utilization)).

The autoscaler's target: the HorizontalPodAutoscaler adds replicas when the average of a
per-pod metric exceeds its target. With Triton's `nv_inference_pending_request_count` (requests
waiting in the scheduler, a gauge), the target is the queue the operating point had: by Little's
law, the mean number waiting = arrival rate x mean time waiting = throughput x server queue
time, both measured at that level. More than that waiting means the replica is past the point
where it kept the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from . import reports, results
from .analyzer import best_within, hand_tuned

#: One replica is planned at this share of its measured throughput (a planning choice; see the
#: module's text).
UTILIZATION = 0.7
#: The traffic the course plans for, in uploads per minute.
TRAFFIC_PER_MINUTE = (1_000, 10_000)
#: The captioned upload's p95 budget (a choice, stated where it is used): a person who uploads a
#: photo waits for its caption, and 5 s is about as long as a page may seem busy. The classifier's
#: budget is Model Analyzer's, analyzer.P95_BUDGET_MS (50 ms).
CAPTION_P95_BUDGET_MS = 5000.0


@dataclass(frozen=True)
class OperatingPoint:
    """What one replica served at the busiest level that kept the p95 budget (one saved row).

    `throughput` in infer/s, `p95_ms` and `queue_ms` in ms (server queue time per request,
    from perf_analyzer's server-side statistics), `requests` the number perf_analyzer counted
    at that level (None when the run did not record it)."""

    model: str
    variant: str
    concurrency: int
    throughput: float
    p95_ms: float
    queue_ms: float
    requests: int | None
    budget_ms: float
    date: str

    @property
    def enough_requests(self) -> bool:
        """At least `reports.MIN_REQUESTS` requests were measured at that level (an unknown
        count is not enough, as in `reports.enough_requests`)."""
        return self.requests is not None and self.requests >= reports.MIN_REQUESTS

    @property
    def counted(self) -> str:
        """The requests measured at that level, as words say it ('12', 'an unknown number of')."""
        return str(self.requests) if self.requests is not None else "an unknown number of"

    @property
    def pending_target(self) -> float:
        """Mean requests waiting in Triton's queue at this level (Little's law: throughput x
        server queue time): the HorizontalPodAutoscaler's averageValue for
        `nv_inference_pending_request_count`."""
        return self.throughput * self.queue_ms / 1000


def operating_point(rows: pd.DataFrame, budget_ms: float) -> OperatingPoint | None:
    """The row of `rows` (a `results.table()` selection, one or several variants of one model)
    with the highest throughput whose p95 kept `budget_ms`; None when no row kept it."""
    row = best_within(rows.assign(**{"p95 latency (ms)": rows[results.P95] / 1000}), budget_ms)
    if row is None:
        return None
    requests = reports.requests_measured(row)
    return OperatingPoint(
        model=str(row["model"]), variant=str(row["variant"]),
        concurrency=int(row["concurrency"]), throughput=float(row[results.THROUGHPUT]),
        p95_ms=float(row[results.P95]) / 1000,
        queue_ms=float(row.get("server queue (us)", 0.0) or 0.0) / 1000,
        requests=requests, budget_ms=budget_ms, date=str(row["date"]))


def classifier_point(budget_ms: float, folder=None) -> OperatingPoint | None:
    """The classifier's operating point over its hand-tuned variants of this course run
    (`analyzer.hand_tuned`: saved since notebook 02's baseline, without Model Analyzer's runs
    and those answered from the response cache). Raises ValueError when no baseline was saved."""
    return operating_point(hand_tuned(folder), budget_ms)


def ensemble_point(table: pd.DataFrame, budget_ms: float,
                   variant: str = "ensemble") -> OperatingPoint | None:
    """The captioning ensemble's operating point from notebook 10's run (`variant` of model
    food_captioning). Raises ValueError when that run was never saved."""
    rows = table[(table["model"] == "food_captioning") & (table["variant"] == variant)]
    if rows.empty:
        raise ValueError(f"no '{variant}' run of food_captioning saved: run notebook 10 first.")
    return operating_point(rows, budget_ms)


def replicas_needed(uploads_per_minute: float, point: OperatingPoint,
                    utilization: float = UTILIZATION) -> dict:
    """The replicas `uploads_per_minute` needs at `point`, with the arithmetic as text:
    {'uploads/min', 'requests/s', 'per replica (infer/s)', 'planned per replica (infer/s)',
    'replicas', 'arithmetic'}."""
    rate = uploads_per_minute / 60
    planned = point.throughput * utilization
    replicas = max(1, math.ceil(rate / planned))
    return {"uploads/min": uploads_per_minute, "requests/s": round(rate, 2),
            "per replica (infer/s)": round(point.throughput, 2),
            "planned per replica (infer/s)": round(planned, 2), "replicas": replicas,
            "arithmetic": (f"ceil({uploads_per_minute:,} / 60 = {rate:.2f} req/s / "
                           f"({point.throughput:.2f} x {utilization:g} = {planned:.2f})) "
                           f"= {replicas}")}


def plan(points: dict[str, OperatingPoint | None], traffic=TRAFFIC_PER_MINUTE,
         utilization: float = UTILIZATION) -> pd.DataFrame:
    """One row per (what is served, traffic): the replicas needed and the autoscaler's pending
    target, with the operating point each rests on. `points` maps a name ('classify', 'caption')
    to its operating point; None (no level kept the budget) gives a row that says so."""
    rows = []
    for name, point in points.items():
        for per_minute in traffic:
            if point is None:
                rows.append({"served": name, "uploads/min": per_minute, "replicas": None,
                             "arithmetic": "no measured level kept the p95 budget"})
                continue
            rows.append({"served": name, "variant": point.variant,
                         "p95 budget (ms)": point.budget_ms,
                         "measured at concurrency": point.concurrency,
                         "p95 there (ms)": round(point.p95_ms, 1),
                         **replicas_needed(per_minute, point, utilization),
                         "pending target per pod": round(point.pending_target, 2),
                         "requests measured": point.requests})
    return pd.DataFrame(rows).astype({"replicas": "Int64"})


def explain(points: dict[str, OperatingPoint | None], table: pd.DataFrame) -> str:
    """The plan in words, each figure from `table` (`plan()`'s) and `points`; a point measured
    on fewer than reports.MIN_REQUESTS requests is named as too few to plan on."""
    lines = ["A calculation from this run's measurements, not a measurement of a cluster."]
    for name, point in points.items():
        if point is None:
            lines.append(f"{name}: no measured level kept the p95 budget, so no number of "
                         "replicas of this machine meets it; a faster replica (a GPU) is needed.")
            continue
        rows = table[table["served"] == name]
        counts = ", ".join(f"{int(r['replicas'])} replica{'s' if r['replicas'] != 1 else ''} "
                           f"for {int(r['uploads/min']):,} uploads/min"
                           for _, r in rows.iterrows())
        text = (f"{name}: one replica served {point.throughput:.1f} infer/s at concurrency "
                f"{point.concurrency} with p95 {point.p95_ms:.1f} ms (budget "
                f"{point.budget_ms:g} ms, '{point.variant}'): {counts}. Autoscaler target: "
                f"{point.pending_target:.2f} pending requests per pod (throughput x queue time "
                f"{point.queue_ms:.2f} ms).")
        if not point.enough_requests:
            text += (f" That level rests on {point.counted} requests (fewer than "
                     f"{reports.MIN_REQUESTS}): too few to plan on; run it in full mode.")
        lines.append(text)
    return "\n".join(lines)


@dataclass(frozen=True)
class AutoscalerTarget:
    """The HorizontalPodAutoscaler's averageValue for pending requests per pod.

    `served`: which operating point it comes from (`point`); `quantity`: that point's
    Little's-law queue (`OperatingPoint.pending_target`, requests) as a Kubernetes quantity in
    thousandths ('530m' = 0.53 requests), at least '1m'; `text`: how it was chosen, in words."""

    served: str
    point: OperatingPoint
    quantity: str
    text: str


def autoscaler_target(points: dict[str, OperatingPoint | None],
                      order: tuple[str, ...] = ("caption", "classify")) -> AutoscalerTarget:
    """The autoscaler's target from the first of `order` in `points` that kept its budget.

    Each replica serves every model, and the adapter's metric sums the pending requests of all
    models in a pod; a captioned upload waits in each of the ensemble's steps, and the ensemble's
    server queue time is the sum of its steps', so the captioning point's Little's-law queue is
    the summed metric's value at that point. Raises ValueError when no point of `order` kept
    its budget (then no replica of this machine meets it, and no target follows from the run)."""
    for served in order:
        point = points.get(served)
        if point is None:
            continue
        milli = max(1, round(point.pending_target * 1000))
        text = (f"target from '{served}' ({point.variant}, concurrency {point.concurrency}): "
                f"{point.throughput:.2f} infer/s x {point.queue_ms:.2f} ms in the queue = "
                f"{point.pending_target:.3f} requests waiting per pod, written {milli}m")
        if point.pending_target * 1000 < 0.5:
            text += " (raised to 1m, the smallest quantity: almost nothing waited there)"
        if not point.enough_requests:
            text += (f"; that level rests on {point.counted} requests, too few to set a target on: "
                     "run it in full mode")
        skipped = [name for name in order[:order.index(served)] if name in points]
        if skipped:
            text += (f"; not from {', '.join(skipped)}: no measured level kept "
                     "its budget")
        return AutoscalerTarget(served, point, f"{milli}m", text + ".")
    raise ValueError(f"no operating point of {list(order)} kept its p95 budget: no autoscaler "
                     "target follows from this run (a faster replica, a GPU, is needed).")
