"""Figures for the notebooks: shown inline and saved as PNG under the output folder."""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from PIL import Image

from .. import settings
from ..common import log
from .metrics import GPU_UTILIZATION, gpu_columns
from .results import BREAKDOWN, CLIENT_SIDE, P50, P95, P99, THROUGHPUT, PerfRun


def save(fig, name: str) -> Path:
    """Save `fig` as `<output>/figures/<name>.png` and return the path."""
    folder = settings.figures_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def image_grid(images: Sequence[Path | str], titles: Sequence[str], title: str = "",
               name: str | None = None, columns: int = 3, cell: tuple[float, float] = (3.2, 2.9),
               fontsize: int = 10):
    """Images in a grid, each under its own title; saved as `name`.png if given."""
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(cell[0] * columns, cell[1] * rows),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, path, text in zip(axes.flat, images, titles):
        ax.imshow(Image.open(path).convert("RGB"))
        ax.set_title(text, fontsize=fontsize)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    if name:
        log.info(f"Figure saved to {save(fig, name)}")
    return fig


def show_predictions(images: Sequence[Path | str], predictions: Sequence, title: str = "",
                     name: str | None = None, columns: int = 3):
    """Each image with the label and probability Triton returned for it."""
    titles = [f"{Path(p).stem}\n→ {pred.label} ({pred.probability:.2f})"
              for p, pred in zip(images, predictions)]
    return image_grid(images, titles, title, name, columns)


def show_captions(images: Sequence[Path | str], answers: Sequence, title: str = "",
                  name: str | None = None, columns: int = 3):
    """Each image with its label, probability and caption from the ensemble."""
    titles = [f"{a.label} ({a.probability:.2f})\n" + "\n".join(textwrap.wrap(a.caption, 38)[:4])
              for a in answers]
    return image_grid(images, titles, title, name, columns, cell=(4, 4), fontsize=9)


# --- performance figures (seaborn) ------------------------------------------------------------
#
# Drawn to be read with few points and long variant names: legends sit outside the axes, names
# are wrapped, an axis turns logarithmic when one value would flatten the rest, and x tick
# labels that would overlap are turned.

#: An axis is made logarithmic when its largest value is more than this many times its smallest
#: positive one: on a linear axis from 0 the small values would lie flat against the bottom.
LOG_RATIO = 20
#: Characters per line of a name in a legend, a panel title or under a bar.
WRAP = 24
#: The parts of a request's time (`BREAKDOWN`, then `CLIENT_SIDE`), one colour each; queue and
#: compute keep theirs in `server_metrics`.
PART_COLOURS = ["#d62728", "#9467bd", "#1f77b4", "#8c564b", "#7f7f7f", "#bcbd22", "#17becf"]
QUEUE_COLOUR, COMPUTE_COLOUR = PART_COLOURS[0], PART_COLOURS[2]


def _seaborn():
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    return sns


#: Where a long name breaks first, so its parts keep their meaning ("ONNX Runtime," then
#: "2 instances + batching"): after a comma or colon, before a '+' or a parenthesis.
_BREAKS = ((", ", ","), (": ", ":"), (" + ", ""), (" (", ""))


def wrap(text, width: int = WRAP) -> str:
    """`text` on lines of at most about `width` characters: broken first after a comma or colon
    or before a '+' or '(' when that leaves lines of at most `width` + 4, else between words
    (a longer word stays whole on its own line)."""
    text = str(text)
    if len(text) <= width:
        return text
    for sep, keep in _BREAKS:
        head, found, tail = text.partition(sep)
        if found and 0 < len(head + keep) <= width + 4:
            rest = tail if keep else sep.lstrip() + tail
            return head + keep + "\n" + (rest if len(rest) <= width + 4 else wrap(rest, width))
    return "\n".join(textwrap.wrap(text, width, break_on_hyphens=False)) or text


def _ms(value: float) -> str:
    """A time in ms as written above a bar: whole ms from 100, else one decimal."""
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def wants_log(values) -> bool:
    """Whether `values` spread too far for a linear axis: the largest more than `LOG_RATIO`
    times the smallest positive one (zeros, negatives and NaN are left out)."""
    v = pd.to_numeric(pd.Series(list(values), dtype=float), errors="coerce")
    v = v[v > 0]
    return bool(len(v) > 1 and v.max() > LOG_RATIO * v.min())


def _scale(ax, values, axis: str = "y") -> bool:
    """A log `axis` on `ax` when `wants_log(values)`, with '(log scale)' added to its label and
    ticks at 1, 2 and 5 of each power of ten in plain numbers; else a linear one from 0.
    Returns whether it is logarithmic."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    along = ax.yaxis if axis == "y" else ax.xaxis
    if not wants_log(values):
        (ax.set_ylim if axis == "y" else ax.set_xlim)(0, None)
        return False
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    along.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    along.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    along.set_minor_formatter(NullFormatter())
    along.set_label_text(f"{along.get_label_text()} (log scale)")
    return True


def _handles(ax) -> tuple[list, list[str]]:
    """The entries of the legend of `ax` (as seaborn drew it), or of its labelled artists."""
    legend = ax.get_legend()
    if legend is not None:
        return list(legend.legend_handles), [t.get_text() for t in legend.get_texts()]
    handles, labels = ax.get_legend_handles_labels()
    return list(handles), list(labels)


def _legend_outside(ax, title: str | None = None, handles=None, labels=None):
    """Put the legend of `ax` (or one made of `handles`, `labels`) to the right of its axes,
    each label wrapped; None when there is nothing to show."""
    sns = _seaborn()
    if handles is not None:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
        ax.legend(handles, labels, title=title)
    elif ax.get_legend() is None:
        found, names = _handles(ax)
        if not found:
            return None
        ax.legend(found, names, title=title)
    options = {"title": title} if title is not None else {}
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, frameon=False,
                    fontsize=9, title_fontsize=9, **options)
    legend = ax.get_legend()
    for text in legend.get_texts():
        text.set_text(wrap(text.get_text()))
    return legend


def _untangle(ax, rotation: int = 30) -> bool:
    """Turn the x tick labels of `ax` by `rotation` degrees (anchored at their right end) when
    any two would overlap as drawn; returns whether they were turned."""
    renderer = ax.figure.canvas.get_renderer()
    shown = [t for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
    boxes = sorted((t.get_window_extent(renderer) for t in shown), key=lambda b: b.x0)
    if not any(a.x1 > b.x0 for a, b in zip(boxes, boxes[1:])):
        return False
    for text in shown:
        text.set_rotation(rotation)
        text.set_horizontalalignment("right")
        text.set_rotation_mode("anchor")
    return True


def _finish(fig, name: str | None):
    fig.tight_layout()
    fig.canvas.draw()
    if any([_untangle(ax) for ax in fig.axes]):
        fig.tight_layout()
    if name:
        log.info(f"Figure saved to {save(fig, name)}")
    return fig


def _levels(ax, df) -> None:
    """x ticks at the measured concurrency levels."""
    ax.set_xticks(sorted(int(c) for c in df["concurrency"].unique()))


def throughput(df, name: str | None = None, title: str = "Throughput against concurrency"):
    """Inferences per second at each concurrency, one line per variant (`df`: rows of
    `perf.run(...).df` or `results.table()`); a log y-axis when one variant's throughput would
    flatten the others'."""
    sns = _seaborn()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    sns.lineplot(data=df, x="concurrency", y=THROUGHPUT, hue="variant", marker="o", ax=ax)
    ax.set(xlabel="concurrent requests", ylabel="throughput (inferences/s)", title=title)
    _scale(ax, df[THROUGHPUT])
    _levels(ax, df)
    _legend_outside(ax, "variant")
    return _finish(fig, name)


def _latency_long(df):
    long = df.melt(id_vars=["variant", "concurrency"], value_vars=[P50, P95, P99],
                   var_name="percentile", value_name="latency (ms)")
    long["latency (ms)"] /= 1000
    long["percentile"] = long["percentile"].str.split().str[0]
    return long


def latency(df, name: str | None = None, title: str = "Latency percentiles against concurrency"):
    """p50, p95 and p99 latency (ms) at each concurrency: for one variant, one line per
    percentile; for several, one panel per percentile (shared y-axis) with a line per variant.
    A log y-axis when the largest latency is more than `LOG_RATIO` times the smallest."""
    sns = _seaborn()
    long = _latency_long(df)
    variants = list(dict.fromkeys(long["variant"]))
    if len(variants) == 1:
        fig, ax = plt.subplots(figsize=(7.5, 4))
        sns.lineplot(data=long, x="concurrency", y="latency (ms)", hue="percentile", marker="o",
                     ax=ax)
        ax.set_title(f"{title}\n{variants[0]}" if variants[0] else title)
        axes = [ax]
        _legend_outside(ax, "percentile")
    else:
        fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharey=True)
        for ax, percentile in zip(axes, ("p50", "p95", "p99")):
            sns.lineplot(data=long[long["percentile"] == percentile], x="concurrency",
                         y="latency (ms)", hue="variant", hue_order=variants, marker="o", ax=ax,
                         legend=ax is axes[-1])
            ax.set_title(f"{percentile} latency", fontsize=11)
        fig.suptitle(title)
        _legend_outside(axes[-1], "variant")
    for ax in axes:
        ax.set_xlabel("concurrent requests")
        _levels(ax, df)
    axes[0].set_ylabel("latency (ms)")
    _scale(axes[0], long["latency (ms)"])
    return _finish(fig, name)


def breakdown(df, name: str | None = None, title: str = "Where a request's time goes",
              by: str = "variant", client_side: bool = True):
    """Stacked bars of the mean time per request (ms), one panel per `by` (variant, or an
    ensemble's step) and a bar per concurrency with its total above it: queue, compute input,
    infer, output and, with `client_side`, the client and network parts. The panels share their
    y-axis unless the largest total is more than `LOG_RATIO` times the smallest: then each has
    its own (a log axis would misdraw each part's share of a stacked bar)."""
    _seaborn()
    parts = BREAKDOWN + ([c for c in CLIENT_SIDE if c in df.columns] if client_side else [])
    table = df.set_index([by, "concurrency"])[parts] / 1000
    table.columns = [c.replace("server ", "").replace(" (us)", "") for c in parts]
    groups = list(dict.fromkeys(table.index.get_level_values(0)))
    own_scales = wants_log(table.sum(axis=1))
    columns = min(len(groups), 4)
    rows = -(-len(groups) // columns)
    bars = max(len(table.loc[g]) for g in groups)
    fig, axes = plt.subplots(rows, columns, squeeze=False, sharey=not own_scales,
                             figsize=(columns * (0.8 * bars + 1.2) + 2.6, 3.6 * rows + 0.6))
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    for ax, group in zip(axes.flat, groups):
        part = table.loc[group]
        part.plot.bar(stacked=True, ax=ax, width=0.7, legend=False,
                      color=PART_COLOURS[: len(parts)])
        totals = part.sum(axis=1)
        for x, total in enumerate(totals):
            ax.annotate(_ms(total), (x, total), textcoords="offset points", xytext=(0, 2),
                        ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(part)), [f"c={c}" for c in part.index], rotation=0)
        ax.set_title(wrap(group, int(12 * (0.8 * bars + 1.2))), fontsize=10)
        ax.set_xlabel("")
        ax.margins(y=0.12)
    for ax in axes[:, 0]:
        ax.set_ylabel("mean time per request (ms)"
                      + ("\n(each panel its own scale)" if own_scales and len(groups) > 1 else ""))
    fig.suptitle(title)
    handles, labels = _handles(axes.flat[0])
    _legend_outside(axes[0, columns - 1], "part of the request", handles, labels)
    return _finish(fig, name)


def throughput_vs_latency(df, name: str | None = None,
                          title: str = "Throughput against p95 latency"):
    """Each variant's curve in the plane people trade off (up and left is better); a marker
    per concurrency level, named in the legend; each axis logarithmic when its values spread
    more than `LOG_RATIO` times."""
    sns = _seaborn()
    data = df.assign(**{"p95 latency (ms)": df[P95] / 1000,
                        "concurrency": [f"{int(c)}" for c in df["concurrency"]]})
    order = sorted(data["concurrency"].unique(), key=int)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    sns.lineplot(data=data, x="p95 latency (ms)", y=THROUGHPUT, hue="variant", sort=False,
                 legend=False, ax=ax)
    sns.scatterplot(data=data, x="p95 latency (ms)", y=THROUGHPUT, hue="variant",
                    style="concurrency", style_order=order, s=70, zorder=3, ax=ax)
    ax.set(xlabel="p95 latency (ms)", ylabel="throughput (inferences/s)", title=title)
    _scale(ax, data["p95 latency (ms)"], "x")
    _scale(ax, data[THROUGHPUT], "y")
    _legend_outside(ax)
    return _finish(fig, name)


def _batch_panels(counts) -> list[tuple[str, dict[int, int]]]:
    per_level = getattr(counts, "batch_counts", None)
    if per_level is not None:  # a PerfRun
        if not per_level:
            raise ValueError("this run has no batch counts per concurrency level: Triton's "
                             "statistics could not be read during it, or it was saved before "
                             "they were recorded. Pass {label: {batch size: executions}}.")
        counts = per_level
    return [(f"concurrency {label}" if isinstance(label, int) else str(label),
             {int(size): int(n) for size, n in sizes.items() if int(n) > 0})
            for label, sizes in counts.items()]


def batch_sizes(counts: PerfRun | Mapping[object, Mapping[int, int]], name: str | None = None,
                title: str = "Batch sizes the model was executed with"):
    """Executions per batch size (Triton's batch_stats), one panel per concurrency level.

    `counts`: a PerfRun (its `batch_counts`, per level), or {label: {batch size: executions}}:
    one panel per label (an int label is a concurrency level). Each panel's title says its
    executions and images per execution; a panel's y-axis is logarithmic when its tallest bar
    is more than `LOG_RATIO` times its shortest. Raises ValueError for a PerfRun without
    per-level counts.
    """
    _seaborn()
    panels = _batch_panels(counts)
    largest = max([max(sizes, default=1) for _, sizes in panels] or [1])
    columns = max(1, min(len(panels), 3))
    rows = -(-max(len(panels), 1) // columns)
    fig, axes = plt.subplots(rows, columns, squeeze=False, sharex=True,
                             figsize=(min(4.6 * columns, 13), 3.4 * rows + 0.6))
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (label, sizes) in zip(axes.flat, panels):
        executions = sum(sizes.values())
        images = sum(size * n for size, n in sizes.items())
        bars = ax.bar(list(sizes), list(sizes.values()), width=0.8, color="#1f77b4")
        ax.bar_label(bars, fontsize=8, padding=1)
        ax.set_title(f"{label}: {executions} executions,\n"
                     f"{images / max(executions, 1):.1f} images each on average", fontsize=10)
        ax.set_xlabel("batch size (images per execution)")
        ax.set_ylabel("executions")
        ax.margins(y=0.15)  # room for the counts above the bars
        _scale(ax, sizes.values())
    ticks = range(1, largest + 1) if largest <= 16 else None
    if ticks is not None:
        for ax in axes.flat:
            ax.set_xticks(list(ticks))
            ax.tick_params(axis="x", labelbottom=True, labelsize=8)
    fig.suptitle(title)
    return _finish(fig, name)


#: Shades of the concurrency levels in `server_metrics`, taken in turn; hatch colours of a
#: level's probe and of a measurement that was not kept.
LEVEL_SHADES = ["#e5e5e5", "#cfe0f1"]
PROBE_HATCH, RETRIED_HATCH = "#e08a00", "#8a8a8a"


def _phases(metrics, phases):
    if phases is None:
        phases = getattr(metrics, "phases", None)
    if phases is None and isinstance(metrics, pd.DataFrame):
        phases = metrics.attrs.get("phases")
    return pd.DataFrame(phases if phases is not None else [])


def _mark_phases(ax, phases, label: bool) -> list:
    """Shade each level's span on `ax` (alternating shades, 'c=N' written at its top), hatch
    its probe ('//') and any measurement that was measured again ('xx'); returns the legend
    entries. Each span's gid names it ('level c=8', 'probe c=8', 'retried c=8')."""
    from matplotlib.patches import Patch
    from matplotlib.transforms import blended_transform_factory

    if phases.empty:
        return []
    top = blended_transform_factory(ax.transData, ax.transAxes)
    retried = False
    for i, level in enumerate(dict.fromkeys(phases["concurrency"])):
        rows = phases[phases["concurrency"] == level]
        start, end = rows["start (s)"].min(), rows["end (s)"].max()
        ax.axvspan(start, end, color=LEVEL_SHADES[i % 2], lw=0, zorder=0, gid=f"level c={level}")
        for _, row in rows[rows["phase"] == "probe"].iterrows():
            ax.axvspan(row["start (s)"], row["end (s)"], facecolor="none", edgecolor=PROBE_HATCH,
                       hatch="//", lw=0, zorder=0, gid=f"probe c={level}")
        measured = rows[rows["phase"] == "measurement"]
        for _, row in measured[measured["attempt"] < measured["attempt"].max()].iterrows():
            retried = True
            ax.axvspan(row["start (s)"], row["end (s)"], facecolor="none",
                       edgecolor=RETRIED_HATCH, hatch="xx", lw=0, zorder=0,
                       gid=f"retried c={level}")
        if label:
            ax.text((start + end) / 2, 0.98, f"c={level}", transform=top, ha="center", va="top",
                    fontsize=9, bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                                      "alpha": 0.8})
    handles = [Patch(facecolor=LEVEL_SHADES[0], label="level c=N running"),
               Patch(facecolor="none", edgecolor=PROBE_HATCH, hatch="//",
                     label="probe (a few requests that size the windows)")]
    if retried:
        handles.append(Patch(facecolor="none", edgecolor=RETRIED_HATCH, hatch="xx",
                             label="measured again: not kept"))
    return handles


def server_metrics(metrics: PerfRun | pd.DataFrame, name: str | None = None,
                   title: str = "Triton's metrics during the run", phases=None):
    """CPU and GPU utilization (%, a line per GPU where Triton reported `gpu_uuid`s) and the
    queue and compute time per request (ms), sampled from :8002 during a perf run.

    `metrics`: a PerfRun, or its `metrics` table. The run's phases (`PerfRun.phases`, or
    `phases` given here, or the table's `attrs['phases']` that `perf.run` sets) are shaded:
    which concurrency level ran when, and its probe. Runs saved before phases were recorded
    are drawn without them. The time panel is logarithmic when its values spread more than
    `LOG_RATIO` times.
    """
    sns = _seaborn()
    table = getattr(metrics, "metrics", metrics)
    spans = _phases(metrics, phases)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8))
    gpus = gpu_columns(table)
    palette = ["#2ca02c", "#9467bd", "#e377c2", "#17becf", "#bcbd22", "#8c564b"]  # no orange: probe
    lines = [("cpu utilization (%)", "CPU")]
    lines += ([(c, c.removeprefix(GPU_UTILIZATION).strip()) for c in gpus] if gpus
              else [(GPU_UTILIZATION, "GPU")])
    for (col, label), colour in zip(lines, itertools.cycle(palette)):
        if col in table:
            sns.lineplot(data=table, x="time (s)", y=col, ax=left, label=label, color=colour)
    left.set(ylabel="utilization (%)", ylim=(0, 112), title="utilization")  # c=N above 100 %
    times = []
    for col, colour in (("queue per request (ms)", QUEUE_COLOUR),
                        ("compute per request (ms)", COMPUTE_COLOUR)):
        if col in table:
            sns.lineplot(data=table, x="time (s)", y=col, ax=right, label=col.split()[0],
                         color=colour)
            times += list(table[col])
    right.set(ylabel="ms per request", title="queue and compute time per request")
    _scale(right, times)
    marks = []
    for ax in (left, right):
        ax.set_xlabel("time since the run started (s)")
        marks = _mark_phases(ax, spans, label=True) or marks
    handles, labels = [], []
    for ax in (left, right):
        h, lb = _handles(ax)
        handles, labels = handles + h, labels + lb
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    handles += marks
    labels += [m.get_label() for m in marks]
    _legend_outside(right, None, handles, labels)
    fig.suptitle(title)
    return _finish(fig, name)


def stages(df, name: str | None = None, title: str = "Where an image's time goes (in-process)"):
    """Stacked horizontal bars: milliseconds per image of each stage, one bar per runtime."""
    _seaborn()
    table = df.pivot_table(index="runtime", columns="stage", values="ms per image", sort=False)
    table.index = [wrap(r, 20) for r in table.index]
    fig, ax = plt.subplots(figsize=(7.5, 0.8 * len(table) + 1.6))
    table.plot.barh(stacked=True, ax=ax, color=["#ff7f0e", "#9467bd", "#1f77b4"])
    ax.set(xlabel="milliseconds per image", ylabel="", title=title)
    _legend_outside(ax, "stage")
    return _finish(fig, name)


def cold_start(df, name: str | None = None,
               title: str = "The first requests after a load, cold and warm"):
    """Latency of each request after a load (one line per variant, mean over the loads with
    its 95% interval; a log y-axis when the first request would flatten the others), and the
    load times."""
    sns = _seaborn()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8),
                                      gridspec_kw={"width_ratios": [2, 1]})
    sns.lineplot(data=df, x="request", y="latency (ms)", hue="variant", marker="o", ax=left)
    left.set_xlabel("request after the load (1 = first)")
    left.set_xticks(sorted(int(r) for r in df["request"].unique()))
    left.set_title("client latency")
    _scale(left, df.groupby(["variant", "request"])["latency (ms)"].mean())
    loads = df.groupby(["variant", "load"], sort=False)["load (s)"].first().reset_index()
    sns.barplot(data=loads, x="variant", y="load (s)", hue="variant", ax=right, legend=False)
    right.set_xticks(range(len(right.get_xticklabels())),
                     [wrap(t.get_text(), 16) for t in right.get_xticklabels()], fontsize=9)
    right.set_title("load until READY")
    right.set_xlabel("")
    handles, labels = _handles(left)
    left.get_legend().remove()
    _legend_outside(right, "variant", handles, labels)
    fig.suptitle(title)
    return _finish(fig, name)


def open_loop(df, knee: dict | None = None, name: str | None = None,
              title: str = "Open-loop load: latency and throughput against offered load"):
    """Two panels from `openloop.sweep`: p50 and p99 latency (ms, log axis when they spread)
    against the offered rate, and the achieved throughput against it with the line where every
    request offered comes back; the knee (`openloop.knee`), when found, as a dashed line."""
    from .openloop import ACHIEVED, OFFERED, P50_MS, P99_MS

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for col, style in ((P50_MS, "o-"), (P99_MS, "s--")):
        left.plot(df[OFFERED], df[col], style, label=col.split()[0])
    left.set(xlabel="offered load (requests/s, Poisson)", ylabel="latency (ms)",
             title="latency")
    _scale(left, pd.concat([df[P50_MS], df[P99_MS]]))
    right.plot(df[OFFERED], df[ACHIEVED], "o-", label="came back")
    top = float(max(df[OFFERED].max(), df[ACHIEVED].max()))
    right.plot([0, top], [0, top], ":", color="grey", label="all that was offered")
    right.set(xlabel="offered load (requests/s, Poisson)", ylabel="throughput (inferences/s)",
              title="throughput")
    for ax in (left, right):
        if knee:
            ax.axvline(knee["offered"], linestyle="--", color="tab:red",
                       label=f"knee, {knee['offered']:.0f} req/s")
        _legend_outside(ax)
    fig.suptitle(title)
    return _finish(fig, name)


def overload(runs: Mapping[str, pd.DataFrame], timeout_ms: float | None = None,
             name: str | None = None,
             title: str = "Overload: how long each request took, answered or refused"):
    """One strip per config (`openloop.drive` results by label): each request's latency (ms),
    coloured by its outcome, so a bounded queue shows as answers that stop early and refusals
    that come at once; the queue timeout, when given, as a dotted line."""
    sns = _seaborn()
    long = pd.concat([r.assign(config=wrap(label)) for label, r in runs.items()],
                     ignore_index=True)
    fig, ax = plt.subplots(figsize=(8, 4))
    sns.stripplot(data=long, x="config", y="latency (ms)", hue="status", dodge=True, size=3,
                  alpha=0.6, ax=ax)
    if timeout_ms:
        ax.axhline(timeout_ms, linestyle=":", color="grey",
                   label=f"queue timeout, {timeout_ms:g} ms")
    ax.set(xlabel="", ylabel="latency (ms)", title=title)
    _scale(ax, long["latency (ms)"])
    handles, labels = ax.get_legend_handles_labels()
    _legend_outside(ax, "outcome", handles, labels)
    return _finish(fig, name)


def cache_latency(table: pd.DataFrame, name: str | None = None,
                  title: str = "One request's latency: a cache miss against a hit"):
    """Each request of `cache.hit_and_miss`'s table as a point, by what was sent and what Triton
    counted (hit, miss, not cached), with the median of each as a bar; a log axis when they
    spread over more than `LOG_RATIO` times."""
    sns = _seaborn()
    data = table.assign(request=table["sent"] + "\n(" + table["cache"] + ")")
    fig, ax = plt.subplots(figsize=(7, 4))
    order = list(dict.fromkeys(data["request"]))
    sns.barplot(data=data, x="request", y="latency (ms)", order=order, estimator="median",
                errorbar=None, color="#c6dbef", ax=ax)
    sns.stripplot(data=data, x="request", y="latency (ms)", order=order, color="#08519c",
                  size=5, jitter=0.15, ax=ax)
    medians = data.groupby("request")["latency (ms)"].median()
    for i, key in enumerate(order):
        ax.annotate(f"median {_ms(medians[key])} ms", (i, medians[key]), ha="center",
                    va="bottom", fontsize=9, xytext=(0, 3), textcoords="offset points")
    ax.set_xlabel("")
    ax.set_ylabel("latency at the client (ms)")
    _scale(ax, data["latency (ms)"])
    ax.set_title(title)
    return _finish(fig, name)


def config_search(points: pd.DataFrame, hand: pd.DataFrame, budget_ms: float,
                  name: str | None = None,
                  title: str = "Model Analyzer's configurations beside the hand-tuned ones"):
    """Throughput against p95 latency: every level Model Analyzer measured (one colour per
    configuration), every level of the hand-tuned variants (grey crosses), the p95 budget as a
    dashed line, and the best point within it of each side ringed. Both tables need
    'p95 latency (ms)' and the throughput column."""
    sns = _seaborn()
    fig, ax = plt.subplots(figsize=(8.5, 4.6))
    sns.scatterplot(data=points, x="p95 latency (ms)", y=THROUGHPUT, hue="variant", s=60,
                    ax=ax)
    ax.scatter(hand["p95 latency (ms)"], hand[THROUGHPUT], marker="x", color="0.45",
               label="hand-tuned (this course run)")
    ax.axvline(budget_ms, ls="--", color="0.3", lw=1, label=f"p95 budget {budget_ms:g} ms")
    for frame, colour in ((points, "tab:red"), (hand, "black")):
        kept = frame[frame["p95 latency (ms)"] <= budget_ms]
        if not kept.empty:
            top = kept.loc[kept[THROUGHPUT].idxmax()]
            ax.scatter([top["p95 latency (ms)"]], [top[THROUGHPUT]], s=260, facecolors="none",
                       edgecolors=colour, linewidths=1.5)
    ax.set_xlabel("p95 latency (ms)")
    ax.set_ylabel("throughput (infer/s)")
    _scale(ax, pd.concat([points["p95 latency (ms)"], hand["p95 latency (ms)"]]), axis="x")
    ax.set_ylim(0, None)
    handles, labels = _handles(ax)  # seaborn's entries, one per configuration
    extra, extra_labels = ax.get_legend_handles_labels()  # the crosses and the budget line
    pairs = dict(zip(labels, handles)) | dict(zip(extra_labels, extra))
    _legend_outside(ax, handles=list(pairs.values()), labels=list(pairs))
    ax.set_title(title)
    return _finish(fig, name)


def replicas(table: pd.DataFrame, name: str | None = None,
             title: str = "One replica against replicas behind nginx"):
    """`measuring.replicas.compare`'s table: one column of panels per protocol, throughput
    (infer/s) on top and p95 latency (ms) below, a bar per setup at each concurrency level,
    each labelled with its value."""
    sns = _seaborn()
    protocols = list(dict.fromkeys(table["protocol"]))
    fig, axes = plt.subplots(2, len(protocols), figsize=(4.6 * len(protocols) + 2.2, 6.4),
                             squeeze=False, sharey="row")
    order = list(dict.fromkeys(table["setup"]))
    for col, protocol in enumerate(protocols):
        part = table[table["protocol"] == protocol]
        for row, (column, label) in enumerate(((THROUGHPUT, "throughput (infer/s)"),
                                               ("p95 latency (ms)", "p95 latency (ms)"))):
            ax = axes[row][col]
            sns.barplot(data=part, x="concurrency", y=column, hue="setup", hue_order=order,
                        errorbar=None, ax=ax)
            for bars in ax.containers:
                ax.bar_label(bars, fmt="%.0f" if column == THROUGHPUT else "%.1f",
                             fontsize=8, padding=2)
            ax.set(xlabel="concurrent requests" if row else "", ylabel=label if not col else "",
                   title=protocol.upper() if not row else "")
            if ax.get_legend() is not None:
                ax.get_legend().remove()
    for row, column in enumerate((THROUGHPUT, "p95 latency (ms)")):
        axes[row][0].set_ylim(0, 1.15 * float(table[column].max()))  # room for the labels
    _legend_outside(axes[0][-1], "setup", *axes[0][-1].get_legend_handles_labels())
    fig.suptitle(title)
    return _finish(fig, name)


def replicas_needed(points: Mapping[str, object], utilization: float,
                    traffic: Sequence[float], name: str | None = None,
                    title: str = "Replicas needed against traffic (a calculation)"):
    """For each operating point of `points` (capacity.OperatingPoint, or None: left out), the
    replicas a traffic of 0 to 1.2 x max(`traffic`) uploads/min needs at `utilization`, as a
    step line; the planned traffic levels as dotted lines. A log y-axis when the counts spread
    far apart."""
    import math

    import numpy as np

    sns = _seaborn()
    top = 1.2 * max(traffic)
    per_minute = np.linspace(1, top, 400)
    rows = []
    for served, point in points.items():
        if point is None:
            continue
        per_replica = point.throughput * utilization * 60  # uploads/min one replica is planned for
        rows += [{"uploads/min": x, "replicas": max(1, math.ceil(x / per_replica)),
                  "served": f"{served} ({point.throughput:.1f} infer/s, p95 budget "
                            f"{point.budget_ms:g} ms)"} for x in per_minute]
    fig, ax = plt.subplots(figsize=(8, 4))
    if rows:
        data = pd.DataFrame(rows)
        sns.lineplot(data=data, x="uploads/min", y="replicas", hue="served", drawstyle="steps-post",
                     ax=ax)
        _scale(ax, data["replicas"])
    for level in traffic:
        ax.axvline(level, ls=":", color="0.4", lw=1)
        ax.annotate(f"{level:,.0f}/min", (level, 1), xytext=(3, 3), textcoords="offset points",
                    fontsize=8, color="0.3")
    ax.set(xlabel="uploads per minute (one request each)", ylabel="replicas",
           title=f"{title}\neach replica planned at {utilization:.0%} of its measured throughput")
    _legend_outside(ax, "served")
    return _finish(fig, name)
