"""Run reductions of chaosnb.analysis for tangent-map runs: finite-time exponents, the A.6 bound, subspace overlaps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from chaosnb.analysis import (
    a6_bound_at_tangent_steps,
    chaotic_overlap_with_baseline,
    tangent_endpoints,
    tangent_value_at,
)
from chaosnb.config import RunConfig
from chaosnb.lyapunov import TangentMap, max_local_exponent
from chaosnb.train import RunResult


def _result(series: dict[str, tuple[list, list]], config: RunConfig | None = None) -> RunResult:
    metrics = {}
    for name, (steps, values) in series.items():
        metrics[name] = np.asarray(values, dtype=np.float64)
        metrics[f"{name}__step"] = np.asarray(steps, dtype=np.int64)
    return RunResult(config=config, metrics=metrics)


def test_tangent_endpoints_skips_non_finite():
    res = _result({"ftle_min": ([2, 5, 9, 12], [-math.inf, -0.4, -0.1, math.nan])})
    assert tangent_endpoints(res, "ftle_min") == (5, -0.4, 9, -0.1)
    empty = _result({"ftle_min": ([2], [-math.inf])})
    first, v0, last, v1 = tangent_endpoints(empty, "ftle_min")
    assert (first, last) == (-1, -1) and math.isnan(v0) and math.isnan(v1)


def test_tangent_value_at():
    res = _result({"chaotic_dim": ([10, 20, 53, 75], [9, 8, 7, 6])})
    assert tangent_value_at(res, "chaotic_dim", 60) == (53, 7.0)
    assert tangent_value_at(res, "chaotic_dim", 10) == (10, 9.0)
    step, value = tangent_value_at(res, "chaotic_dim", 5)
    assert step == -1 and math.isnan(value)


def _sgd_tangent_run(momentum: float, steps: int = 12, n: int = 6, tangent_steps=(1, 3, 7, 12)) -> RunResult:
    """A synthetic tangent-map run recorded exactly like chaosnb.train (lle_max_step at index s, ftle at s+1)."""
    gen = torch.Generator().manual_seed(3)
    tm = TangentMap(n, lr=0.1, momentum=momentum)
    lle_steps, lle, f_steps, fmax = [], [], [], []
    for s in range(steps):
        a = torch.randn(n, n, generator=gen, dtype=torch.float64)
        h = (a + a.T) * 2.0
        tm.step(h)
        lle_steps.append(s)
        lle.append(max_local_exponent(h, 0.1))
        if s + 1 in tangent_steps:
            f_steps.append(s + 1)
            fmax.append(tm.lyapunov().max_exponent)
    return _result({"lle_max_step": (lle_steps, lle), "ftle_max": (f_steps, fmax)})


def test_a6_bound_holds_for_sgd_and_alignment():
    res = _sgd_tangent_run(0.0)
    steps, bound, fmax = a6_bound_at_tangent_steps(res)
    assert steps.tolist() == [1, 3, 7, 12]
    lle = res.metrics["lle_max_step"]
    np.testing.assert_allclose(bound, [lle[:t].mean() for t in (1, 3, 7, 12)])
    # at t = 1 the bound is attained exactly: ||I - lr H_0||_2 = exp(lle_0)
    assert fmax[0] == pytest.approx(bound[0], rel=1e-10)
    assert np.all(fmax <= bound + 1e-12)


def test_a6_bound_nan_for_missing_updates():
    res = _result({"lle_max_step": ([0, 1, 2], [0.3, 0.2, 0.1]), "ftle_max": ([2, 5], [0.2, 0.1])})
    steps, bound, fmax = a6_bound_at_tangent_steps(res)
    assert bound[0] == pytest.approx(0.25) and math.isnan(bound[1])
    assert fmax.tolist() == [0.2, 0.1]


def test_chaotic_overlap_with_baseline():
    cfg = RunConfig(steps=40, tangent_steps=(10, 20, 40), snapshot_steps=(10, 40))
    res = _result({"chaotic_dim": ([10, 20, 40], [30, 20, 0]), "non_chaotic_dim": ([10, 20, 40], [70, 80, 100]),
                   "overlap_from_10": ([20, 40], [0.6, math.nan])}, cfg)
    out = chaotic_overlap_with_baseline(res)
    assert (out["s0"], out["d0"], out["n"]) == (10, 30, 100)
    assert out["steps"].tolist() == [20, 40]
    assert out["dims"].tolist() == [20.0, 0.0]
    assert out["baseline"][0] == pytest.approx(0.3)  # max(30, 20) / 100
    assert math.isnan(out["baseline"][1])  # empty subspace at t = 40
    assert out["overlap"][0] == 0.6


def test_chaotic_overlap_from_a_later_snapshot():
    cfg = RunConfig(steps=40, tangent_steps=(10, 20, 40), snapshot_steps=(10, 20))
    res = _result({"chaotic_dim": ([10, 20, 40], [30, 20, 10]), "non_chaotic_dim": ([10, 20, 40], [70, 80, 90]),
                   "overlap_from_10": ([20, 40], [0.6, 0.5]), "overlap_from_20": ([40], [0.9])}, cfg)
    out = chaotic_overlap_with_baseline(res, 20)
    assert (out["s0"], out["d0"], out["steps"].tolist(), out["overlap"].tolist()) == (20, 20, [40], [0.9])
    assert out["baseline"][0] == pytest.approx(0.2)  # max(20, 10) / 100
    with pytest.raises(ValueError, match="not a snapshot step"):
        chaotic_overlap_with_baseline(res, 40)
