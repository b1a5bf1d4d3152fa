"""Small reductions of recorded runs used by the notebooks' verdicts (no plotting, no I/O)."""

from __future__ import annotations

import math

import numpy as np

from chaosnb.train import RunResult


def tail_mean(result: RunResult, metric: str, window: int, column: int | None = None) -> float:
    """Mean of the last ``window`` finite recorded values of a metric (optionally one model's column)."""
    _, values = result.series(metric)
    if column is not None:
        values = values[:, column]
    values = values[np.isfinite(values)][-window:]
    return float(values.mean()) if values.size else math.nan


def window_mean(result: RunResult, metric: str, start: int, stop: int, column: int | None = None) -> float:
    """Mean of a metric over recorded steps in [start, stop)."""
    steps, values = result.series(metric)
    if column is not None:
        values = values[:, column]
    mask = (steps >= start) & (steps < stop) & np.isfinite(values)
    return float(values[mask].mean()) if mask.any() else math.nan


def first_step_reaching(result: RunResult, metric: str, level: float, window: int = 1) -> int | None:
    """First step at which the trailing ``window`` mean of a metric reaches ``level`` (None if never)."""
    from chaosnb.plots import moving_average

    steps, values = result.series(metric)
    smooth = moving_average(values, window)
    hits = np.nonzero(smooth >= level)[0]
    return int(steps[hits[0]]) if hits.size else None


def trend(result: RunResult, metric: str, column: int | None = None) -> float:
    """Least-squares slope of a metric against its step index, per 1000 steps."""
    steps, values = result.series(metric)
    if column is not None:
        values = values[:, column]
    mask = np.isfinite(values)
    if mask.sum() < 2:
        return math.nan
    return float(np.polyfit(steps[mask], values[mask], 1)[0] * 1000)
