"""Reading measurements as a person would: the columns to look at first, and what changed
between runs, told from their own numbers (throughput, latency, and the queue and compute time
that explain them).

Every verdict here (helped, hurt, no clear change) comes from `verdict`, which refuses to judge
a concurrency level measured on fewer than MIN_REQUESTS requests, and calls a change smaller than
the tolerance perf_analyzer's windows were allowed to differ by "no clear change"."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from . import results
from .results import P50, P95, P99, REQUESTS, THROUGHPUT

#: A level measured on fewer requests than this is flagged and never used for a verdict: with a
#: few dozen requests, one slow request (a stall of the shared cores) moves p95 and throughput
#: by more than most changes the course makes.
MIN_REQUESTS = 50
#: The tolerance used when a row does not record perf_analyzer's --stability-percentage.
DEFAULT_TOLERANCE_PERCENT = 10
HELPED, HURT, NO_CHANGE, TOO_FEW = "helped", "hurt", "no clear change", "too few requests"
QUEUE, COMPUTE = "server queue (us)", "server compute infer (us)"


def requests_measured(row) -> int | None:
    """The requests a row's figures rest on (perf_analyzer's count), or None if not recorded."""
    value = row.get(REQUESTS) if hasattr(row, "get") else None
    if value is None or pd.isna(value):
        return None
    return int(value)


def enough_requests(row) -> bool:
    """Whether a row rests on at least MIN_REQUESTS requests (unknown counts are not enough)."""
    count = requests_measured(row)
    return count is not None and count >= MIN_REQUESTS


def tolerance_of(*rows) -> float:
    """The fraction within which two measured rows count as the same: the largest
    `stability_percent` their windows were allowed to differ by (DEFAULT_TOLERANCE_PERCENT where
    no row records one), over 100."""
    percents = [row.get("stability_percent") for row in rows if hasattr(row, "get")]
    percents = [float(p) for p in percents if p is not None and not pd.isna(p)]
    return (max(percents) if percents else DEFAULT_TOLERANCE_PERCENT) / 100


def _ms(value: float) -> str:
    """A latency in ms as the verdicts write it: whole ms from 10 ms, else two significant
    figures (a cache hit's 0.3 ms is not 0)."""
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


@dataclass(frozen=True)
class Verdict:
    """What changed at one concurrency level between two measured rows, and why.

    `outcome` is HELPED or HURT (throughput changed by more than `tolerance`), NO_CHANGE, or
    TOO_FEW (either row rests on fewer than MIN_REQUESTS requests: no verdict is drawn).
    Times are in ms per request; `cause` names the server-side part that explains the change
    (empty for NO_CHANGE and TOO_FEW)."""

    level: int
    outcome: str
    ratio: float
    throughput: tuple[float, float]
    p95_ms: tuple[float, float]
    queue_ms: tuple[float, float]
    compute_ms: tuple[float, float]
    requests: tuple[int | None, int | None]
    tolerance: float
    cause: str = ""

    @property
    def judged(self) -> bool:
        return self.outcome != TOO_FEW

    def text(self) -> str:
        (t0, t1), (p0, p1) = self.throughput, self.p95_ms
        (q0, q1), (c0, c1) = self.queue_ms, self.compute_ms
        figures = (f"concurrency {self.level}: {t0:.1f} -> {t1:.1f} infer/s ({self.ratio:.2f}x); "
                   f"p95 {_ms(p0)} -> {_ms(p1)} ms; queued {q0:.1f} -> {q1:.1f} ms, model compute "
                   f"{c0:.1f} -> {c1:.1f} ms per request")
        if self.outcome == TOO_FEW:
            counts = " and ".join("?" if n is None else str(n) for n in self.requests)
            return (f"{figures}: measured on {counts} requests, fewer than {MIN_REQUESTS}: too "
                    "few to judge, read these figures as rough")
        if self.outcome == NO_CHANGE:
            return (f"{figures}: no clear change (within the {self.tolerance:.0%} the "
                    "measurement's windows were allowed to differ)")
        return f"{figures}: {self.outcome}, {self.cause}"


def verdict(before, after, level: int | None = None) -> Verdict:
    """Judge one concurrency level: `before` and `after` are rows (Series or dicts) with the
    course's columns (throughput, p95, server queue and compute in us, request count,
    stability_percent). Throughput decides helped/hurt; the change in queue and in compute time
    per request says which explains it."""
    ms = lambda row, col: float(row[col]) / 1000  # noqa: E731
    t0, t1 = float(before[THROUGHPUT]), float(after[THROUGHPUT])
    q0, q1, c0, c1 = ms(before, QUEUE), ms(after, QUEUE), ms(before, COMPUTE), ms(after, COMPUTE)
    ratio = t1 / t0 if t0 > 0 else float("inf")
    tol = tolerance_of(before, after)
    common = dict(level=int(level if level is not None else after["concurrency"]), ratio=ratio,
                  throughput=(t0, t1), p95_ms=(ms(before, P95), ms(after, P95)),
                  queue_ms=(q0, q1), compute_ms=(c0, c1),
                  requests=(requests_measured(before), requests_measured(after)), tolerance=tol)
    if not (enough_requests(before) and enough_requests(after)):
        return Verdict(outcome=TOO_FEW, **common)
    if 1 / (1 + tol) < ratio < 1 + tol:
        return Verdict(outcome=NO_CHANGE, **common)
    d_queue, d_compute = q1 - q0, c1 - c0
    if ratio > 1:
        if d_compute < 0 and (c1 <= 0.9 * c0 or -d_compute >= max(-d_queue, 0)):
            # a request queues behind the executions ahead of it: shorter ones, shorter waits
            cause = "mostly less time in the model" + (
                ", and so less waiting in the queue behind each execution" if d_queue < 0 else "")
        elif d_queue < 0:
            cause = ("mostly less waiting in the queue (one execution now serves several "
                     "requests, or executions run side by side)")
        else:
            cause = ("neither the queue nor the model's time fell: the time outside the server "
                     "did (client side and network)")
        return Verdict(outcome=HELPED, cause=cause, **common)
    slower = c1 / c0 if c0 > 0 else float("inf")
    if slower >= 1.5:
        cause = f"each execution took {slower:.1f}x as long, so requests also queued longer"
    elif d_queue > 0 and d_queue >= d_compute:
        cause = "more waiting in the queue"
    elif d_compute > 0:
        cause = "more time in the model"
    else:
        cause = ("neither the queue nor the model's time rose: the time outside the server did "
                 "(client side and network; perf_analyzer shares the cores with Triton)")
    return Verdict(outcome=HURT, cause=cause, **common)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """The columns a person reads first: throughput, latency percentiles and the server's queue
    and compute time in ms, how many requests the figures rest on, and a note on a level with
    too few of them to judge from."""
    out = df[["variant", "concurrency", THROUGHPUT]].copy()
    for col in (P50, P95, P99):
        out[col.replace("(us)", "(ms)")] = df[col] / 1000
    out["server queue (ms)"] = df[QUEUE] / 1000
    out["server compute infer (ms)"] = df[COMPUTE] / 1000
    if REQUESTS in df.columns:  # the requests the figures rest on
        out["requests measured"] = df[REQUESTS]
        out["note"] = ["" if enough_requests(row) else
                       f"fewer than {MIN_REQUESTS} requests: rough, not judged"
                       for _, row in df.iterrows()]
    return out.round(2)


def explain_queue(df: pd.DataFrame) -> str:
    """The queue-versus-compute story of one variant, from its lowest to its highest
    concurrency, told from its measured breakdown; no verdict when either level rests on too
    few requests."""
    rows = df.sort_values("concurrency")
    lo, hi = rows.iloc[0], rows.iloc[-1]
    c_lo, c_hi = int(lo["concurrency"]), int(hi["concurrency"])
    ms = lambda row, col: row[col] / 1000  # noqa: E731
    lines = [
        f"At concurrency {c}: {row[THROUGHPUT]:.1f} infer/s; a request spends "
        f"{ms(row, QUEUE):.1f} ms queued and {ms(row, COMPUTE):.1f} ms in the model (p50 latency "
        f"{ms(row, P50):.1f} ms); {requests_measured(row) or '?'} requests measured."
        for c, row in ((c_lo, lo), (c_hi, hi))]
    few = [c for c, row in ((c_lo, lo), (c_hi, hi)) if not enough_requests(row)]
    if few:
        lines.append(f"Concurrency {' and '.join(map(str, few))} rests on fewer than "
                     f"{MIN_REQUESTS} requests: too few to say what more clients did.")
        return "\n".join(lines)
    gain = hi[THROUGHPUT] / lo[THROUGHPUT]
    queue_share = hi[QUEUE] / max(hi[P50], 1)
    compute_lo, compute_hi = ms(lo, COMPUTE), ms(hi, COMPUTE)
    change = compute_hi / max(compute_lo, 1e-9)
    lines.append(f"{c_hi / c_lo:g}x the clients gave {gain:.2f}x the "
                 f"throughput; at concurrency {c_hi}, {queue_share:.0%} of the p50 "
                 "latency is time in the queue.")
    if change >= 1.15:
        lines.append(f"Each request's time in the model rose too, {compute_lo:.1f} -> "
                     f"{compute_hi:.1f} ms ({change:.2f}x): the executions themselves got slower "
                     "(perf_analyzer's clients run on the same machine and take CPU time too).")
    elif change <= 0.87:
        lines.append(f"Each request's time in the model fell, {compute_lo:.1f} -> "
                     f"{compute_hi:.1f} ms ({change:.2f}x).")
    elif gain < 1.3 and queue_share > 0.5:
        lines.append(f"Each request's time in the model stayed about the same ({compute_lo:.1f} "
                     f"and {compute_hi:.1f} ms): the model was already busy, so the extra "
                     "requests mostly waited in the queue.")
    return "\n".join(lines)


def compare(before: pd.DataFrame, after: pd.DataFrame) -> str:
    """What changed between two measured variants, level by level, from their own numbers
    (`verdict` at each level both measured).

    Throughput and p95 latency, and the two server-side parts that explain them: the time a
    request waited in Triton's queue and the model's compute time it was part of (with dynamic
    batching, a request's compute time is that of the whole batch it ran in).
    """
    b_all, a_all = before.set_index("concurrency"), after.set_index("concurrency")
    name_b, name_a = before["variant"].iloc[0], after["variant"].iloc[0]
    lines = [f"{name_a} against {name_b}:"]
    for level in sorted(set(b_all.index) & set(a_all.index)):
        lines.append("  " + verdict(b_all.loc[level], a_all.loc[level], level).text())
    if len(lines) == 1:
        lines.append("  no concurrency level measured in both runs")
    return "\n".join(lines)


def winners(df: pd.DataFrame) -> pd.DataFrame:
    """For each concurrency: the variant with the highest throughput and the one with lowest
    p95, among the levels measured on at least MIN_REQUESTS requests (the others are counted
    as left out)."""
    rows = []
    for level, group in df.groupby("concurrency"):
        group = group.reset_index(drop=True)
        judged = group[[enough_requests(row) for _, row in group.iterrows()]]
        row = {"concurrency": level, "variants judged": len(judged),
               "left out (too few requests)": ", ".join(sorted(set(group["variant"])
                                                               - set(judged["variant"])))}
        if judged.empty:
            row.update({"highest throughput": "-", "lowest p95 latency": "-"})
        else:
            best = judged.loc[judged[THROUGHPUT].idxmax()]
            fastest = judged.loc[judged[P95].idxmin()]
            row.update({"highest throughput": f"{best['variant']} ({best[THROUGHPUT]:.1f}/s)",
                        "lowest p95 latency": f"{fastest['variant']} ({fastest[P95] / 1000:.0f}"
                                              " ms)"})
        rows.append(row)
    columns = ["concurrency", "highest throughput", "lowest p95 latency", "variants judged",
               "left out (too few requests)"]
    return pd.DataFrame(rows, columns=columns)


def explain(df: pd.DataFrame, reference: str = "baseline") -> str:
    """Each variant against `reference` (runs of the reference's model only), at the highest
    concurrency both measured on enough requests: `verdict`'s figures and cause, in one line
    per variant."""
    if reference not in set(df["variant"]):
        return f"no '{reference}' run saved: run {results.measured_by(reference)} first."
    if "model" in df.columns:  # compare like with like: runs of the reference's model only
        df = df[df["model"] == df.loc[df["variant"] == reference, "model"].iloc[0]]
    ref = df[df["variant"] == reference].set_index("concurrency")
    lines = []
    for variant, group in df[df["variant"] != reference].groupby("variant", sort=False):
        rows = group.set_index("concurrency")
        common = sorted(set(rows.index) & set(ref.index))
        if not common:
            lines.append(f"{variant}: no concurrency level in common with {reference}")
            continue
        judged = [lv for lv in common if verdict(ref.loc[lv], rows.loc[lv], lv).judged]
        level = (judged or common)[-1]
        v = verdict(ref.loc[level], rows.loc[level], level)
        lines.append(f"{variant} against {reference}, {v.text()}.")
    return "\n".join(lines)


def delay_cost(before: pd.DataFrame, after: pd.DataFrame, delay_ms: float, level: int = 1) -> str:
    """What a batching queue delay cost at `level` (1: one request in flight, so no partner
    ever arrives): the queue time per request before and after, against `delay_ms`, the
    config's max_queue_delay_microseconds in ms. Flags a level on too few requests."""
    b, a = before.set_index("concurrency"), after.set_index("concurrency")
    if level not in b.index or level not in a.index:
        return f"concurrency {level} was not measured in both runs"
    q0, q1 = b.loc[level, QUEUE] / 1000, a.loc[level, QUEUE] / 1000
    line = (f"concurrency {level}: queued {q0:.1f} -> {q1:.1f} ms per request ({q1 - q0:+.1f} "
            f"ms); max_queue_delay_microseconds lets a request wait up to {delay_ms:g} ms "
            "for others to join its batch")
    if not (enough_requests(b.loc[level]) and enough_requests(a.loc[level])):
        line += f" (fewer than {MIN_REQUESTS} requests measured: rough)"
    elif delay_ms > 0:
        line += f": the queue grew by {(q1 - q0) / delay_ms:.0%} of that delay"
    return line
