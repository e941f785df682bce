"""Figures of a study: alpha x beta heatmap (Table 4), AP vs top-m, PCC vs AP (Table 6) and
training curves. Figures are built without pyplot (no global state) and drawn by Agg."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from reports.cells import factor, metric_value, numbers_in, top_m  # noqa: E402
from reports.tables import RowSummary  # noqa: E402


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG (110 dpi) and return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, format="png")
    return path


def _alpha_beta(row: RowSummary) -> tuple[float, float] | None:
    alpha, beta = factor(row.factors, "alpha"), factor(row.factors, "beta")
    if alpha is not None and beta is not None:
        return float(alpha), float(beta)
    found = numbers_in(row.label)
    return (found[0], found[1]) if len(found) >= 2 else None


def alpha_beta_heatmap(rows: list[RowSummary]) -> Figure:
    """Mean AP per (alpha, beta) cell; grid rows without a finished trial show their status."""
    cells = {ab: r for r in rows if (ab := _alpha_beta(r)) is not None}
    alphas = sorted({a for a, _ in cells})
    betas = sorted({b for _, b in cells})
    grid = np.full((len(alphas), len(betas)), np.nan)  # (alpha, beta)
    for (a, b), row in cells.items():
        grid[alphas.index(a), betas.index(b)] = metric_value(row.mean, "AP") if row.status == "ok" else np.nan
    fig = Figure(figsize=(1.4 * len(betas) + 2.5, 1.0 * len(alphas) + 1.8))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto")
    fig.colorbar(image, ax=ax, label="AP (ours, mean over seeds)")
    for (a, b), row in cells.items():
        text = f"{grid[alphas.index(a), betas.index(b)]:.1f}" if row.status == "ok" else row.status
        ax.text(betas.index(b), alphas.index(a), text, ha="center", va="center", color="black",
                bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1.5})
    ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
    ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_xlabel("β (IoU exponent)")
    ax.set_ylabel("α (score exponent)")
    ax.set_title("AP over α × β (grey: not in the grid or no finished trial)")
    fig.tight_layout()
    return fig


def topm_plot(rows: list[RowSummary]) -> Figure:
    """AP (mean ± sample std over seeds) against TAL's top-m, with the paper's numbers."""
    done = sorted((r for r in rows if r.status == "ok"), key=top_m)
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.errorbar([top_m(r) for r in done], [metric_value(r.mean, "AP") for r in done],
                yerr=[np.nan_to_num(metric_value(r.std, "AP")) for r in done],
                marker="o", capsize=4, label="ours (mean ± std)")
    paper = sorted((top_m(r), r.paper["AP"]) for r in rows if "AP" in r.paper)
    if paper:
        ax.plot(*zip(*paper), "s--", color="grey", label="paper")
    for r in rows:
        if r.status != "ok":
            ax.axvline(top_m(r), color="red", alpha=0.3, linestyle=":", label=f"m={top_m(r):g}: {r.status}")
    ax.set_xlabel("top-m (TAL candidates per GT)")
    ax.set_ylabel("AP")
    ax.set_title("AP vs top-m")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def pcc_scatter(rows: list[RowSummary]) -> Figure:
    """PCC (top-50) against AP per row: ours (mean ± std) on the left, the paper's on the right."""
    fig = Figure(figsize=(10, 4.2))
    ours_ax, paper_ax = fig.subplots(1, 2)
    for r in rows:
        if r.status == "ok":
            ours_ax.errorbar(metric_value(r.mean, "AP"), metric_value(r.mean, "PCC"),
                             xerr=np.nan_to_num(metric_value(r.std, "AP")),
                             yerr=np.nan_to_num(metric_value(r.std, "PCC")), marker="o", capsize=3,
                             label=r.label)
        if {"AP", "PCC"} <= r.paper.keys():
            paper_ax.plot(r.paper["AP"], r.paper["PCC"], "s", label=r.label)
    for ax, title in ((ours_ax, "ours"), (paper_ax, "paper (COCO minival)")):
        ax.set_xlabel("AP")
        ax.set_ylabel("PCC (top-50)")
        ax.set_title(f"PCC vs AP: {title}")
        ax.margins(0.15)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="x-small", loc="best")
    fig.tight_layout()
    return fig


def training_curves(histories: pd.DataFrame, metrics: tuple[str, ...] = ("loss_total", "epoch_AP")) -> Figure:
    """Per-epoch ``metrics`` for each row: mean over seeds, shaded ± sample std.

    ``histories``: reports.collect.metric_histories (columns row, row_index, seed, metric, step, value).
    """
    fig = Figure(figsize=(5 * len(metrics), 4))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        own = histories[histories["metric"] == metric]
        for (_, row), group in own.groupby(["row_index", "row"], sort=True):
            stats = group.groupby("step")["value"].agg(["mean", "std"]).fillna({"std": 0.0})
            ax.plot(stats.index, stats["mean"], marker=".", label=row)
            ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} (mean over seeds)" if len(own) else f"{metric}: not logged")
        if len(own):
            ax.legend(fontsize="x-small")
    fig.tight_layout()
    return fig
