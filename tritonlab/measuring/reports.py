"""Reading measurements as a person would: the columns to look at first, and what changed
between runs, told from their own numbers (throughput, latency, and the queue and compute time
that explain them)."""

from __future__ import annotations

import pandas as pd

from .results import P50, P95, P99, THROUGHPUT


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """The columns a person reads first: throughput, latency percentiles and the server's queue
    and compute time in ms, and how many requests the figures rest on."""
    out = df[["variant", "concurrency", THROUGHPUT]].copy()
    for col in (P50, P95, P99):
        out[col.replace("(us)", "(ms)")] = df[col] / 1000
    out["server queue (ms)"] = df["server queue (us)"] / 1000
    out["server compute infer (ms)"] = df["server compute infer (us)"] / 1000
    if "request count" in df.columns:  # the requests the figures rest on
        out["requests measured"] = df["request count"]
    return out.round(2)


def explain_queue(df: pd.DataFrame) -> str:
    """The queue-versus-compute story of one variant, told from its measured breakdown."""
    rows = df.sort_values("concurrency")
    lo, hi = rows.iloc[0], rows.iloc[-1]
    c_lo, c_hi = int(lo["concurrency"]), int(hi["concurrency"])
    ms = lambda row, col: row[col] / 1000  # noqa: E731
    lines = [
        f"At concurrency {c_lo}: {lo[THROUGHPUT]:.1f} infer/s; a request spends "
        f"{ms(lo, 'server queue (us)'):.1f} ms queued and {ms(lo, 'server compute infer (us)'):.1f}"
        f" ms in the model (p50 latency {ms(lo, P50):.1f} ms).",
        f"At concurrency {c_hi}: {hi[THROUGHPUT]:.1f} infer/s; a request spends "
        f"{ms(hi, 'server queue (us)'):.1f} ms queued and {ms(hi, 'server compute infer (us)'):.1f}"
        f" ms in the model (p50 latency {ms(hi, P50):.1f} ms).",
    ]
    gain = hi[THROUGHPUT] / lo[THROUGHPUT]
    queue_share = hi["server queue (us)"] / max(hi[P50], 1)
    compute = "server compute infer (us)"
    compute_lo, compute_hi = ms(lo, compute), ms(hi, compute)
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
    """What changed between two measured variants, level by level, from their own numbers.

    Throughput and p95 latency, and the two server-side parts that explain them: the time a
    request waited in Triton's queue and the model's compute time it was part of (with dynamic
    batching, a request's compute time is that of the whole batch it ran in).
    """
    b_all, a_all = before.set_index("concurrency"), after.set_index("concurrency")
    name_b, name_a = before["variant"].iloc[0], after["variant"].iloc[0]
    lines = [f"{name_a} against {name_b}:"]
    for level in sorted(set(b_all.index) & set(a_all.index)):
        b, a = b_all.loc[level], a_all.loc[level]
        ms = lambda row, col: row[col] / 1000  # noqa: E731
        lines.append(
            f"  concurrency {level}: {b[THROUGHPUT]:.1f} -> {a[THROUGHPUT]:.1f} infer/s "
            f"({a[THROUGHPUT] / b[THROUGHPUT]:.2f}x); p95 {ms(b, P95):.0f} -> {ms(a, P95):.0f} ms; "
            f"queued {ms(b, 'server queue (us)'):.1f} -> {ms(a, 'server queue (us)'):.1f} ms, "
            f"model compute {ms(b, 'server compute infer (us)'):.1f} -> "
            f"{ms(a, 'server compute infer (us)'):.1f} ms per request")
    if len(lines) == 1:
        lines.append("  no concurrency level measured in both runs")
    return "\n".join(lines)


def winners(df: pd.DataFrame) -> pd.DataFrame:
    """For each concurrency: the variant with the highest throughput and the one with lowest p95."""
    rows = []
    for level, group in df.groupby("concurrency"):
        best = group.loc[group[THROUGHPUT].idxmax()]
        fastest = group.loc[group[P95].idxmin()]
        rows.append({"concurrency": level,
                     "highest throughput": f"{best['variant']} ({best[THROUGHPUT]:.1f}/s)",
                     "lowest p95 latency": f"{fastest['variant']} ({fastest[P95] / 1000:.0f} ms)",
                     "variants measured": len(group)})
    return pd.DataFrame(rows)


def explain(df: pd.DataFrame, reference: str = "baseline") -> str:
    """Each variant against `reference` at the highest concurrency both measured, in numbers:
    throughput, and whether the gain came from less queueing or from less compute."""
    if reference not in set(df["variant"]):
        return f"no '{reference}' run saved: run notebook 02 first."
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
        level = common[-1]
        a, b = rows.loc[level], ref.loc[level]
        queue = (a["server queue (us)"] - b["server queue (us)"]) / 1000
        compute = (a["server compute infer (us)"] - b["server compute infer (us)"]) / 1000
        slower = a["server compute infer (us)"] / max(b["server compute infer (us)"], 1)
        if a[THROUGHPUT] >= b[THROUGHPUT]:
            cause = ("mostly less time in the model" if compute < 0 and -compute >= abs(queue)
                     else "mostly less waiting in the queue (one execution now serves several "
                          "requests, or executions run side by side)")
        elif slower >= 1.5:
            cause = f"each execution took {slower:.1f}x as long, so requests also queued longer"
        else:
            cause = "more waiting in the queue" if queue >= compute else "more time in the model"
        lines.append(
            f"{variant}: {a[THROUGHPUT] / b[THROUGHPUT]:.2f}x the {reference}'s throughput at "
            f"concurrency {level} ({a[THROUGHPUT]:.1f} vs {b[THROUGHPUT]:.1f} infer/s), p95 "
            f"{a[P95] / 1000:.0f} vs {b[P95] / 1000:.0f} ms; queue {queue:+.1f} ms and model "
            f"compute {compute:+.1f} ms per request: {cause}.")
    return "\n".join(lines)
