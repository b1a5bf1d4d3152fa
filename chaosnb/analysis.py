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


def lyapunov_distance_bounds(stage1: RunResult, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First-order distance bounds eps*sigma_min(Y_t) <= d(t) <= eps*sigma_max(Y_t) from a tangent-map run.

    With sigma_i(Y_t) = exp(t * ftle_i(t)), returns (steps, lower, upper) at the run's tangent steps t:
    lower = eps * exp(t * ftle_min(t)) (smallest finite exponent; 0 where it is -inf / not finite) and
    upper = eps * exp(t * ftle_max(t)). Steps are the numbers of updates taken (int array).
    """
    steps, fmax = stage1.series("ftle_max")
    steps_min, fmin = stage1.series("ftle_min")
    if not np.array_equal(steps, steps_min):
        raise ValueError("ftle_max and ftle_min were recorded at different steps")
    t = np.asarray(steps, dtype=np.float64)
    fmax = np.asarray(fmax, dtype=np.float64)
    fmin = np.asarray(fmin, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        upper = eps * np.exp(t * fmax)
        lower = np.where(np.isfinite(fmin), eps * np.exp(t * np.where(np.isfinite(fmin), fmin, 0.0)), 0.0)
    upper = np.where(np.isnan(fmax), np.nan, upper)
    lower = np.where(np.isnan(fmin), np.nan, lower)
    return np.asarray(steps, dtype=np.int64), lower, upper


def tangent_endpoints(result: RunResult, metric: str) -> tuple[int, float, int, float]:
    """(first step, value, last step, value) of a tangent-step metric over its FINITE recorded values.

    Non-finite entries (e.g. an ftle_min of -inf when no exponent is resolved) are skipped; all nan when
    the metric has no finite value.
    """
    steps, values = result.series(metric)
    values = np.asarray(values, dtype=np.float64)
    mask = np.isfinite(values)
    if not mask.any():
        return -1, math.nan, -1, math.nan
    idx = np.nonzero(mask)[0]
    return int(steps[idx[0]]), float(values[idx[0]]), int(steps[idx[-1]]), float(values[idx[-1]])


def tangent_value_at(result: RunResult, metric: str, step: int) -> tuple[int, float]:
    """(step, value) of a tangent-step metric at the last recorded step <= ``step`` ((-1, nan) if none)."""
    steps, values = result.series(metric)
    idx = np.nonzero(np.asarray(steps) <= step)[0]
    if not idx.size:
        return -1, math.nan
    return int(steps[idx[-1]]), float(values[idx[-1]])


def a6_bound_at_tangent_steps(result: RunResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Theorem A.6 against the measured maximal exponent: (tangent steps t, bound(t), ftle_max(t)).

    bound(t) = (1/t) sum_{s<t} lle_max_step(s) (:func:`chaosnb.lyapunov.mlce_upper_bound`); lle_max_step is
    recorded at the 0-based index s of the update, so t updates use the entries s = 0..t-1. Tangent steps
    whose t updates are not all recorded (a diverged run) get nan.
    """
    from chaosnb.lyapunov import mlce_upper_bound

    lle_steps, lle = result.series("lle_max_step")
    order = np.argsort(lle_steps)
    lle_steps, lle = np.asarray(lle_steps)[order], np.asarray(lle, dtype=np.float64)[order]
    running = mlce_upper_bound(lle).numpy() if lle.size else np.zeros(0)
    contiguous = np.array_equal(lle_steps, np.arange(lle_steps.size))
    steps, fmax = result.series("ftle_max")
    bound = np.full(len(steps), np.nan)
    for i, t in enumerate(np.asarray(steps, dtype=np.int64)):
        if contiguous and 1 <= t <= running.size:
            bound[i] = running[t - 1]
    return np.asarray(steps, dtype=np.int64), bound, np.asarray(fmax, dtype=np.float64)


def chaotic_overlap_with_baseline(result: RunResult, s0: int | None = None) -> dict:
    """Figure C.2.1 for one tangent-map run: overlap of V_chaotic(s0) with V_chaotic(t), s0 a snapshot step
    (default: the first), and the random baseline of equation (65) for this run (R = 1: max(d0, d_t) / N).

    Returns a dict with s0, d0 = dim V_chaotic(s0), n (number of parameters), steps (t > s0 where the overlap
    was recorded), overlap, dims (d_t) and baseline (arrays of the same length as steps).
    """
    from chaosnb.subspace import random_baseline

    snapshots = result.config.snapshot_steps
    s0 = min(snapshots) if s0 is None else int(s0)
    if s0 not in snapshots:
        raise ValueError(f"step {s0} is not a snapshot step of this run (snapshot_steps = {snapshots})")
    dim_steps, dims = result.series("chaotic_dim")
    _, non_dims = result.series("non_chaotic_dim")
    lookup = {int(s): i for i, s in enumerate(dim_steps)}
    i0 = lookup[s0]
    n = int(dims[i0] + non_dims[i0])
    d0 = int(dims[i0])
    steps, values = result.series(f"overlap_from_{s0}")
    steps = np.asarray(steps, dtype=np.int64)
    dims_t = np.array([dims[lookup[int(s)]] for s in steps], dtype=np.float64)
    if steps.size:
        baseline = np.asarray(random_baseline([d0], dims_t[None, :], [n]), dtype=np.float64).reshape(-1)
    else:
        baseline = np.zeros(0)
    return {"s0": int(s0), "d0": d0, "n": n, "steps": steps, "overlap": np.asarray(values, dtype=np.float64),
            "dims": dims_t, "baseline": baseline}


# ---------------------------------------------------------------------------------------------------------
# Perturbation (distance) experiments: C.3.1-C.3.3, C.4.1, C.5.1


def _perturbed_names(result: RunResult, columns: int) -> list[str]:
    """Names of the perturbed models (the distance columns), from the run's meta or STRATEGIES order."""
    from chaosnb.perturb import STRATEGIES

    names = list(result.meta.get("models", []))[1:] or list(STRATEGIES)
    if len(names) != columns:
        raise ValueError(f"{columns} distance columns but models {names}")
    return names


def perturbation_distances_at(result: RunResult, step: int | None = None) -> dict[str, float]:
    """{strategy: |theta_s(t) - theta_0(t)|} of a perturbation run at recorded step ``step``.

    Default: the last recorded step. Strategies whose distance is not finite there (NaN direction, e.g. an
    empty chaotic subspace) are left out. Raises ValueError if ``step`` was not recorded.
    """
    steps, d = result.series("distance")
    d = np.atleast_2d(np.asarray(d, dtype=np.float64))
    if step is None:
        row = d.shape[0] - 1
    else:
        hits = np.nonzero(np.asarray(steps) == step)[0]
        if not hits.size:
            raise ValueError(f"distance was not recorded at step {step}")
        row = int(hits[0])
    names = _perturbed_names(result, d.shape[1])
    return {name: float(d[row, j]) for j, name in enumerate(names) if math.isfinite(d[row, j])}


def distance_growth(result: RunResult, step: int | None = None) -> float:
    """Geometric mean over the strategies of d(step) / eps: how much the perturbations grew (1 = not at all)."""
    finals = np.array(list(perturbation_distances_at(result, step).values()))
    finals = finals[finals > 0]
    if not finals.size:
        return math.nan
    return float(np.exp(np.mean(np.log(finals / result.config.perturb_eps))))


def smoothed_columns(result: RunResult, metric: str, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a per-model metric (n, k) with each column replaced by its trailing moving average."""
    from chaosnb.plots import moving_average

    steps, values = result.series(metric)
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        return steps, moving_average(values, window)
    return steps, np.stack([moving_average(values[:, j], window) for j in range(values.shape[1])], axis=1)


def accuracy_gaps(result: RunResult, window: int, metric: str = "train_acc",
                  early_fraction: float = 0.25) -> dict[str, dict[str, float]]:
    """Accuracy of each perturbed model minus the unperturbed model's (column 0) in a perturbation run.

    Per model: ``final`` = difference of the last values of the trailing ``window`` moving averages (C.3.2/C.3.3),
    ``mean`` = mean difference over the whole run, ``early`` = mean difference over the first ``early_fraction``
    of the recorded steps (at least one). All models see the same mini-batches, so the differences are paired.
    """
    steps, values = result.series(metric)
    values = np.asarray(values, dtype=np.float64)
    names = _perturbed_names(result, values.shape[1] - 1)
    _, smooth = smoothed_columns(result, metric, window)
    n_early = max(1, int(round(early_fraction * len(steps))))
    out = {}
    for j, name in enumerate(names, start=1):
        diff = values[:, j] - values[:, 0]
        ok = np.isfinite(diff)
        early = ok.copy()
        early[n_early:] = False
        out[name] = {"final": float(smooth[-1, j] - smooth[-1, 0]),
                     "mean": float(diff[ok].mean()) if ok.any() else math.nan,
                     "early": float(diff[early].mean()) if early.any() else math.nan}
    return out


def bounds_coverage(result: RunResult, bound_steps, lower, upper) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Which recorded distances lie within [lower, upper] at the bound steps (Figure C.5.1).

    Returns (steps, names, inside): the bound steps at which the perturbation run recorded a distance, the
    strategies with finite distances, and a bool array (len(steps), len(names)). A NaN bound counts as violated.
    """
    steps, d = result.series("distance")
    d = np.atleast_2d(np.asarray(d, dtype=np.float64))
    names_all = _perturbed_names(result, d.shape[1])
    keep_cols = [j for j in range(d.shape[1]) if np.isfinite(d[:, j]).all()]
    index = {int(s): i for i, s in enumerate(np.asarray(steps))}
    rows, lo_list, up_list = [], [], []
    for t, lo, up in zip(np.asarray(bound_steps), np.asarray(lower, dtype=np.float64),
                         np.asarray(upper, dtype=np.float64), strict=True):
        if int(t) in index:
            rows.append(int(t))
            lo_list.append(lo)
            up_list.append(up)
    sel = d[[index[t] for t in rows]][:, keep_cols] if rows else np.empty((0, len(keep_cols)))
    lo_arr = np.asarray(lo_list, dtype=np.float64)[:, None]
    up_arr = np.asarray(up_list, dtype=np.float64)[:, None]
    with np.errstate(invalid="ignore"):
        inside = (sel >= lo_arr) & (sel <= up_arr) if rows else np.zeros((0, len(keep_cols)), dtype=bool)
    return np.asarray(rows, dtype=np.int64), [names_all[j] for j in keep_cols], inside
