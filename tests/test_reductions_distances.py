"""Run reductions of chaosnb.analysis for perturbation ensembles: distances, growth, accuracy gaps, bound coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chaosnb.analysis import (
    accuracy_gaps,
    bounds_coverage,
    distance_growth,
    perturbation_distances_at,
    smoothed_columns,
)
from chaosnb.config import RunConfig
from chaosnb.perturb import STRATEGIES
from chaosnb.plots import moving_average
from chaosnb.train import RunResult

MODELS = ["unperturbed", *STRATEGIES]


def _result(series: dict[str, tuple[list, list]], eps: float = 0.1) -> RunResult:
    metrics = {}
    for name, (steps, values) in series.items():
        metrics[name] = np.asarray(values, dtype=np.float64)
        metrics[f"{name}__step"] = np.asarray(steps, dtype=np.int64)
    config = RunConfig(steps=10, perturb_eps=eps, perturb_strategies=STRATEGIES)
    return RunResult(config=config, metrics=metrics, meta={"models": MODELS})


def _distance_run(eps: float = 0.1) -> RunResult:
    steps = np.arange(4)
    d = np.array([[eps] * 5, [0.2, 0.15, 0.1, 0.08, 0.05], [0.4, 0.2, 0.1, 0.07, 0.02], [0.8, 0.3, 0.1, 0.06, 0.01]])
    d[:, 3] = np.nan  # e.g. an empty non-chaotic subspace
    return _result({"distance": (steps, d)}, eps)


def test_distances_at_default_and_step():
    res = _distance_run()
    last = perturbation_distances_at(res)
    assert list(last) == ["max_chaotic", "chaotic", "random", "max_non_chaotic"]
    assert last["max_chaotic"] == pytest.approx(0.8)
    assert perturbation_distances_at(res, 1)["chaotic"] == pytest.approx(0.15)
    with pytest.raises(ValueError, match="not recorded"):
        perturbation_distances_at(res, 7)


def test_distance_growth_is_geometric_mean_over_finite_strategies():
    res = _distance_run()
    expected = math.exp(np.mean(np.log(np.array([0.8, 0.3, 0.1, 0.01]) / 0.1)))
    assert distance_growth(res) == pytest.approx(expected)
    assert distance_growth(res, 0) == pytest.approx(1.0)


def test_smoothed_columns_per_column():
    values = np.array([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    res = _result({"train_acc": (np.arange(4), values)})
    steps, smooth = smoothed_columns(res, "train_acc", 2)
    assert smooth.shape == values.shape
    np.testing.assert_allclose(smooth[:, 0], moving_average(values[:, 0], 2))
    np.testing.assert_allclose(smooth[:, 1], [1.0, 1.0, 0.5, 0.0])


def test_accuracy_gaps_paired_differences():
    n = 8
    base = np.linspace(0.2, 0.9, n)
    acc = np.stack([base] + [base + k * 0.01 for k in range(1, 6)], axis=1)
    acc[:2, 2] += 0.1  # the chaotic model is better early only
    res = _result({"train_acc": (np.arange(n), acc)})
    gaps = accuracy_gaps(res, window=4, early_fraction=0.25)
    assert list(gaps) == list(STRATEGIES)
    assert gaps["max_chaotic"]["final"] == pytest.approx(0.01)
    assert gaps["max_chaotic"]["mean"] == pytest.approx(0.01)
    assert gaps["chaotic"]["early"] == pytest.approx(0.12)
    assert gaps["chaotic"]["mean"] == pytest.approx(0.02 + 0.2 / n)
    assert gaps["max_non_chaotic"]["final"] == pytest.approx(0.05)


def test_bounds_coverage_selects_recorded_steps_and_finite_strategies():
    res = _distance_run()
    steps, names, inside = bounds_coverage(res, [1, 3, 5], [0.05, 0.011, 0.0], [0.3, 0.5, 1.0])
    assert steps.tolist() == [1, 3]  # step 5 was not recorded
    assert names == ["max_chaotic", "chaotic", "random", "max_non_chaotic"]
    assert inside.tolist() == [[True, True, True, True], [False, True, True, False]]
    _, _, nan_bound = bounds_coverage(res, [2], [0.0], [math.nan])
    assert not nan_bound.any()
