"""Figure helpers shared by all notebooks: one style, smoothing, consistent colours and labels."""

from __future__ import annotations

import warnings

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


def seed_band(series, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, min, max) over seeds of the trailing moving averages (``window``) of ``series``, a list of
    (steps, values) pairs, one per seed, on the steps all seeds recorded (a diverged seed ends the band early:
    the common prefix is used; its NaNs are ignored by the NaN-aware mean / min / max)."""
    if not series:
        raise ValueError("seed_band needs at least one (steps, values) series")
    n = min(len(steps) for steps, _ in series)
    steps = np.asarray(series[0][0][:n])
    smooth = np.stack([moving_average(np.asarray(v, dtype=np.float64)[:n], window) for _, v in series])
    with warnings.catch_warnings():  # all-NaN columns (every seed diverged) give NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        return steps, np.nanmean(smooth, 0), np.nanmin(smooth, 0), np.nanmax(smooth, 0)


def plot_band(ax, series, window: int, label: str | None = None, color=None, **kwargs):
    """Mean over seeds of the smoothed curves, with the min-max band over seeds shaded (its edges drawn thinly, so
    the figure's data file holds them); one seed: :func:`plot_smoothed`."""
    if len(series) == 1:
        return plot_smoothed(ax, *series[0], window, label=label, color=color, **kwargs)
    steps, mean, low, high = seed_band(series, window)
    ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)
    ax.plot(steps, low, color=color, alpha=0.5, linewidth=0.4)
    ax.plot(steps, high, color=color, alpha=0.5, linewidth=0.4)
    return ax.plot(steps, mean, color=color, label=label, **kwargs)[0]


def mark_divergence(ax, step: int | None, color=None, label: str | None = None) -> None:
    """A vertical marker where a run diverged (non-finite loss)."""
    if step is not None:
        ax.axvline(step, color=color or "k", linestyle=":", linewidth=1.0)
        if label:
            ax.annotate(label, (step, 0.98), xycoords=("data", "axes fraction"), fontsize=8, ha="right",
                        va="top", rotation=90, color=color or "k")


def label_axes(ax, xlabel: str = "training step", ylabel: str | None = None, title: str | None = None) -> None:
    """Set the x label, and the y label and title when given."""
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


# ---------------------------------------------------------------------------------------------------------------
# Under each figure: its numbers as a CSV file and a "computed by" line (functions, verdict, data download)

FIGURE_DATA_DIR = "figdata"
FIGURE_DATA_COLUMNS = ("panel", "panel_title", "xlabel", "ylabel", "series", "kind", "x", "y")


def figure_data(fig) -> list[tuple]:
    """Every plotted number of ``fig`` in long form, one row per point (columns ``FIGURE_DATA_COLUMNS``).

    Lines (``plot``, ``axvline``...), scatter points (``scatter``) and bars (``bar``) of every visible panel are
    read back from the artists, so the file holds exactly what the figure shows. Unlabelled artists (the faint raw
    curves under a moving average) are named by their panel-local index. Images and contour sets carry no
    per-point data here and are left out.
    """
    from matplotlib.collections import PathCollection
    from matplotlib.patches import Rectangle

    rows = []
    for panel, ax in enumerate(a for a in fig.axes if a.get_visible()):
        meta = (panel, ax.get_title(), ax.get_xlabel(), ax.get_ylabel())

        def name(artist, i, kind):
            label = artist.get_label()
            return label if label and not label.startswith("_") else f"unlabelled {kind} {i}"

        for i, line in enumerate(ax.get_lines()):
            for x, y in np.asarray(line.get_xydata(), dtype=np.float64).reshape(-1, 2):
                rows.append((*meta, name(line, i, "line"), "line", x, y))
        for i, coll in enumerate(c for c in ax.collections if isinstance(c, PathCollection)):
            for x, y in np.asarray(coll.get_offsets(), dtype=np.float64).reshape(-1, 2):
                rows.append((*meta, name(coll, i, "points"), "scatter", x, y))
        for i, container in enumerate(ax.containers):
            bars = [p for p in container if isinstance(p, Rectangle)]
            for bar in bars:
                rows.append((*meta, name(container, i, "bars"), "bar", bar.get_x() + bar.get_width() / 2,
                             bar.get_height()))
    return rows


def write_figure_data(fig, path) -> int:
    """Write :func:`figure_data` of ``fig`` as CSV to ``path`` (folders created); returns the number of rows."""
    import csv
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = figure_data(fig)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(FIGURE_DATA_COLUMNS)
        writer.writerows((*row[:6], repr(float(row[6])), repr(float(row[7]))) for row in rows)
    return len(rows)


def resolve_api_name(name: str):
    """The ``chaosnb`` object named by a dotted path (``"chaosnb.cgd.CGD"``); a clear error if there is none."""
    import importlib

    if not name.startswith("chaosnb"):
        raise ValueError(f"computed_by names chaosnb objects by their dotted path; got {name!r}")
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                raise ValueError(f"{name!r}: {'.'.join(parts[:cut])} has no attribute {attr!r}")
            obj = getattr(obj, attr)
        return obj
    raise ValueError(f"{name!r}: no such module")


def api_role(obj) -> str:
    """A MyST cross-reference to ``obj`` (a function, class, method or module, or its dotted path) on the API page."""
    import inspect

    if isinstance(obj, str):
        obj = resolve_api_name(obj)
    if inspect.ismodule(obj):
        return f"{{py:mod}}`{obj.__name__}`"
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module or not qualname or not module.startswith("chaosnb"):
        raise ValueError(f"computed_by takes chaosnb functions, classes or modules; got {obj!r}")
    role = "py:class" if inspect.isclass(obj) else ("py:meth" if "." in qualname else "py:func")
    return f"{{{role}}}`~{module}.{qualname}`"


def computed_by_line(figure: str, computed_by, data_file: str | None, verdicts=None) -> str:
    """MyST text of the line under a figure: the functions that computed it, links to its verdicts, its data.

    ``verdicts`` names the figures whose verdict boxes the line links to (default: ``[figure]``; empty: none).
    """
    from chaosnb.report import verdict_anchor

    if not computed_by:
        raise ValueError(f"{figure}: name at least one chaosnb function in computed_by")
    verdicts = [figure] if verdicts is None else list(verdicts)
    parts = [f"**{figure}** computed by " + ", ".join(api_role(obj) for obj in computed_by)]
    # raw HTML links: the verdict box's id is an HTML anchor (chaosnb.report.verdict_anchor), not a Sphinx label
    parts += [f'<a href="#{verdict_anchor(name)}">verdict for {name}</a>' for name in verdicts]
    if data_file:
        parts.append(f"{{download}}`plotted numbers (CSV) <{data_file}>`")
    return ":::{container} computed-by\n" + " · ".join(parts) + "\n:::"


def show_figure(fig, figure: str, computed_by, verdicts=None, data: bool = True) -> str | None:
    """Show ``fig`` in the notebook, then its "computed by" line; with ``data`` its numbers go to a CSV first.

    The CSV is written to ``figdata/<figure slug>.csv`` next to the notebook (its working directory) and linked
    with MyST's ``{download}`` role, so the HTML build copies it next to the page. Returns the CSV path (None
    when the figure plots no lines, points or bars).
    """
    import matplotlib.pyplot as plt
    from IPython.display import Markdown, display

    from chaosnb.report import verdict_anchor

    data_file = None
    if data and figure_data(fig):  # a figure of images only (the dataset samples) has no plotted numbers
        data_file = f"{FIGURE_DATA_DIR}/{verdict_anchor(figure).removeprefix('verdict-')}.csv"
        write_figure_data(fig, data_file)
    line = computed_by_line(figure, computed_by, data_file, verdicts)
    plt.show()
    display(Markdown(line))
    return data_file
