"""Run reductions of chaosnb.analysis: the Lyapunov distance bounds of a stage-1 run (Figure 3, C.5.1)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chaosnb.analysis import lyapunov_distance_bounds
from chaosnb.train import RunResult


def _stage1(steps, fmax, fmin) -> RunResult:
    steps = np.asarray(steps, dtype=np.int64)
    metrics = {"ftle_max": np.asarray(fmax, dtype=np.float64), "ftle_max__step": steps,
               "ftle_min": np.asarray(fmin, dtype=np.float64), "ftle_min__step": steps}
    return RunResult(config=None, metrics=metrics)


def test_lyapunov_distance_bounds_values():
    res = _stage1([1, 10, 100], [0.1, 0.01, 0.002], [-0.5, -0.05, -math.inf])
    steps, lower, upper = lyapunov_distance_bounds(res, 0.1)
    assert steps.tolist() == [1, 10, 100]
    np.testing.assert_allclose(upper, 0.1 * np.exp([0.1, 0.1, 0.2]))
    np.testing.assert_allclose(lower, [0.1 * math.exp(-0.5), 0.1 * math.exp(-0.5), 0.0])
    assert np.all(lower <= upper)


def test_lyapunov_distance_bounds_nan_and_mismatch():
    res = _stage1([5], [math.nan], [math.nan])
    _, lower, upper = lyapunov_distance_bounds(res, 1.0)
    assert np.isnan(lower[0]) and np.isnan(upper[0])
    bad = _stage1([1, 2], [0.0, 0.0], [0.0, 0.0])
    bad.metrics["ftle_min__step"] = np.array([1, 3])
    with pytest.raises(ValueError):
        lyapunov_distance_bounds(bad, 1.0)
