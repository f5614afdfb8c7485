"""Figures for the notebooks: shown inline and saved as PNG under the output folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
from PIL import Image

from .. import settings
from ..common import log
from .results import BREAKDOWN, CLIENT_SIDE, P50, P95, P99, THROUGHPUT


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
    import textwrap

    titles = [f"{a.label} ({a.probability:.2f})\n" + "\n".join(textwrap.wrap(a.caption, 38)[:4])
              for a in answers]
    return image_grid(images, titles, title, name, columns, cell=(4, 4), fontsize=9)


# --- performance figures (seaborn) ------------------------------------------------------------

def _seaborn():
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    return sns


def _finish(fig, name: str | None):
    fig.tight_layout()
    if name:
        log.info(f"Figure saved to {save(fig, name)}")
    return fig


def throughput(df, name: str | None = None, title: str = "Throughput against concurrency"):
    """Inferences per second at each concurrency, one line per variant."""

    sns = _seaborn()
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.lineplot(data=df, x="concurrency", y=THROUGHPUT, hue="variant", marker="o", ax=ax)
    ax.set(xlabel="concurrent requests", ylabel="throughput (inferences/s)", title=title)
    ax.set_ylim(bottom=0)
    ax.set_xticks(sorted(df["concurrency"].unique()))
    return _finish(fig, name)


def latency(df, name: str | None = None, title: str = "Latency percentiles against concurrency"):
    """p50, p95 and p99 latency (ms) at each concurrency; colour = variant, dashes = percentile."""

    sns = _seaborn()
    long = df.melt(id_vars=["variant", "concurrency"], value_vars=[P50, P95, P99],
                   var_name="percentile", value_name="latency (ms)")
    long["latency (ms)"] /= 1000
    long["percentile"] = long["percentile"].str.split().str[0]
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.lineplot(data=long, x="concurrency", y="latency (ms)", hue="variant", style="percentile",
                 marker="o", ax=ax)
    ax.set(xlabel="concurrent requests", ylabel="latency (ms)", title=title)
    ax.set_ylim(bottom=0)
    ax.set_xticks(sorted(df["concurrency"].unique()))
    return _finish(fig, name)


def breakdown(df, name: str | None = None, title: str = "Where a request's time goes",
              by: str = "variant", client_side: bool = True):
    """Stacked bars per `by` (variant, or an ensemble's step) and concurrency: queue, compute
    input, infer, output and, with `client_side`, the client and network parts."""

    parts = BREAKDOWN + ([c for c in CLIENT_SIDE if c in df.columns] if client_side else [])
    table = df.set_index([by, "concurrency"])[parts] / 1000
    table.columns = [c.replace("server ", "").replace(" (us)", "") for c in parts]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(table) + 2), 4.2))
    table.plot.bar(stacked=True, ax=ax, width=0.75,
                   color=["#d62728", "#9467bd", "#1f77b4", "#8c564b", "#7f7f7f", "#bcbd22",
                          "#17becf"][: len(parts)])
    ax.set_xticklabels([f"{v}\nc={c}" for v, c in table.index], rotation=0, fontsize=8)
    ax.set(xlabel="", ylabel="mean time per request (ms)", title=title)
    ax.legend(fontsize=8, loc="upper left")
    return _finish(fig, name)


def throughput_vs_latency(df, name: str | None = None,
                          title: str = "Throughput against p95 latency"):
    """Each variant's curve in the plane people trade off: up and left is better."""

    sns = _seaborn()
    data = df.assign(**{"p95 latency (ms)": df[P95] / 1000})
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.lineplot(data=data, x="p95 latency (ms)", y=THROUGHPUT, hue="variant", marker="o",
                 sort=False, ax=ax)
    for _, row in data.iterrows():
        ax.annotate(f"c={row['concurrency']}", (row["p95 latency (ms)"], row[THROUGHPUT]),
                    textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set(xlabel="p95 latency (ms)", ylabel="throughput (inferences/s)", title=title)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    return _finish(fig, name)


def batch_sizes(counts: dict[str, dict[int, int]], name: str | None = None,
                title: str = "Batch sizes the model was executed with"):
    """Executions per batch size (Triton's batch_stats), one bar colour per label."""
    import pandas as pd

    sns = _seaborn()
    rows = [{"when": label, "batch size": size, "executions": n}
            for label, sizes in counts.items() for size, n in sorted(sizes.items())]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    if rows:
        sns.barplot(data=pd.DataFrame(rows), x="batch size", y="executions", hue="when", ax=ax)
    ax.set(xlabel="batch size (images per model execution)", ylabel="executions", title=title)
    return _finish(fig, name)


def server_metrics(metrics, name: str | None = None,
                   title: str = "Triton's metrics during the run"):
    """CPU/GPU utilization and per-request queue and compute time, sampled from :8002."""
    sns = _seaborn()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    for col in ("cpu utilization (%)", "gpu utilization (%)"):
        if col in metrics:
            sns.lineplot(data=metrics, x="time (s)", y=col, ax=left, label=col.split()[0].upper())
    left.set(ylabel="utilization (%)", ylim=(0, 105), title="utilization")
    for col in ("queue per request (ms)", "compute per request (ms)"):
        if col in metrics:
            sns.lineplot(data=metrics, x="time (s)", y=col, ax=right, label=col.split()[0])
    right.set(ylabel="ms per request", title="queue and compute time")
    fig.suptitle(title)
    return _finish(fig, name)


def stages(df, name: str | None = None, title: str = "Where an image's time goes (in-process)"):
    """Stacked horizontal bars: milliseconds per image of each stage, one bar per runtime."""
    _seaborn()
    table = df.pivot_table(index="runtime", columns="stage", values="ms per image", sort=False)
    fig, ax = plt.subplots(figsize=(7, 0.8 * len(table) + 1.6))
    table.plot.barh(stacked=True, ax=ax, color=["#ff7f0e", "#9467bd", "#1f77b4"])
    ax.set(xlabel="milliseconds per image", ylabel="", title=title)
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.3))
    return _finish(fig, name)


def cold_start(df, name: str | None = None,
               title: str = "The first requests after a load, cold and warm"):
    """Latency of each request after a load (one line per variant, mean over the loads with
    its 95% interval), and the load times."""
    sns = _seaborn()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8),
                                      gridspec_kw={"width_ratios": [2, 1]})
    sns.lineplot(data=df, x="request", y="latency (ms)", hue="variant", marker="o", ax=left)
    left.set_xlabel("request after the load (1 = first)")
    left.set_title("client latency")
    loads = df.groupby(["variant", "load"], sort=False)["load (s)"].first().reset_index()
    sns.barplot(data=loads, x="variant", y="load (s)", hue="variant", ax=right, legend=False)
    right.set_title("load until READY")
    right.set_xlabel("")
    fig.suptitle(title)
    return _finish(fig, name)
