"""Figure helpers shared by all notebooks: one style, smoothing, consistent colours and labels."""

from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

PRUNE_COLORS = {"sgd": "#1f77b4", "chaotic": "#d62728", "neg": "#2ca02c", "pos": "#ff7f0e"}
PRUNE_LABELS = {"sgd": "SGD (no pruning)", "chaotic": "CGD, chaotic pruned", "neg": "CGD, negative pruned",
                "pos": "CGD, positive pruned"}
STRATEGY_COLORS = {"unperturbed": "#000000", "max_chaotic": "#b2182b", "chaotic": "#ef8a62", "random": "#7f7f7f",
                   "non_chaotic": "#67a9cf", "max_non_chaotic": "#2166ac"}
STRATEGY_LABELS = {"unperturbed": "unperturbed", "max_chaotic": "maximal chaotic", "chaotic": "chaotic",
                   "random": "random", "non_chaotic": "non-chaotic", "max_non_chaotic": "maximal non-chaotic"}


def apply_style() -> None:
    """The book's matplotlib style: readable in the HTML at its default width."""
    mpl.rcParams.update({
        "figure.figsize": (9.0, 4.0), "figure.dpi": 110, "savefig.dpi": 110, "axes.grid": True,
        "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False, "font.size": 10,
        "axes.titlesize": 10.5, "legend.fontsize": 8.5, "legend.frameon": False, "lines.linewidth": 1.4,
        "figure.constrained_layout.use": True,
    })


def moving_average(values, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` samples (shorter at the start), NaN-aware."""
    x = np.asarray(values, dtype=np.float64)
    if window <= 1 or x.size == 0:
        return x.copy()
    valid = np.isfinite(x)
    csum = np.concatenate([[0.0], np.cumsum(np.where(valid, x, 0.0))])
    ccount = np.concatenate([[0], np.cumsum(valid)])
    idx = np.arange(1, x.size + 1)
    lo = np.maximum(idx - window, 0)
    count = ccount[idx] - ccount[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (csum[idx] - csum[lo]) / np.maximum(count, 1), np.nan)


def plot_smoothed(ax, steps, values, window: int, label: str | None = None, color=None, raw: bool = True,
                  **kwargs):
    """Faint raw curve plus its moving average (the paper's 'smoothed, solid lines')."""
    steps = np.asarray(steps)
    values = np.asarray(values, dtype=np.float64)
    if raw and window > 1:
        ax.plot(steps, values, color=color, alpha=0.18, linewidth=0.7)
    return ax.plot(steps, moving_average(values, window), color=color, label=label, **kwargs)[0]


def mark_divergence(ax, step: int | None, color=None, label: str | None = None) -> None:
    """A vertical marker where a run diverged (non-finite loss)."""
    if step is not None:
        ax.axvline(step, color=color or "k", linestyle=":", linewidth=1.0)
        if label:
            ax.annotate(label, (step, 0.98), xycoords=("data", "axes fraction"), fontsize=8, ha="right",
                        va="top", rotation=90, color=color or "k")


def label_axes(ax, xlabel: str = "training step", ylabel: str | None = None, title: str | None = None) -> None:
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)


def panel_grid(n: int, ncols: int = 2, width: float = 9.0, height_per_row: float = 3.0, **kwargs):
    """A grid of ``n`` axes (extra ones hidden), returned flat."""
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height_per_row * nrows), squeeze=False, **kwargs)
    flat = axes.ravel()
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


# one colour per dataset/model of the reference runs (C.1, C.2); dashed = momentum 0.9
RUN_COLORS = {("usps", "mlp"): "#1f77b4", ("usps", "cnn"): "#ff7f0e", ("fashion_mnist", "mlp"): "#2ca02c",
              ("fashion_mnist", "cnn"): "#d62728"}


def reference_run_style(name: str, **extra) -> dict:
    """Line style of a reference run (``chaosnb.experiments.REFERENCE_RUNS`` name) plus ``extra`` kwargs."""
    from chaosnb.experiments import REFERENCE_RUNS

    dataset, model, momentum = REFERENCE_RUNS[name]
    return {"color": RUN_COLORS[(dataset, model)], "linestyle": "--" if momentum else "-", **extra}


def log_step_axis(ax) -> None:
    """Log-scaled step axis with plain numbers (1, 2, 5, 10, 20, ...)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
