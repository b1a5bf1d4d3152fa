"""The reductions every verdict reads (issue 11, item 2): gradient overlaps and spectrum metrics recorded per step,
and the run reductions tail_mean, window_mean, trend and first_step_reaching, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from chaosnb.analysis import first_step_reaching, tail_mean, trend, window_mean
from chaosnb.curvature import Spectrum
from chaosnb.train import RunResult, gradient_overlaps, spectrum_metrics

F64 = torch.float64


def _result(values, steps=None, name: str = "m") -> RunResult:
    values = np.asarray(values, dtype=np.float64)
    steps = np.arange(len(values)) if steps is None else np.asarray(steps)
    return RunResult(config=None, metrics={name: values, f"{name}__step": steps.astype(np.int64)})


def _spectrum(eigenvalues, n: int, seed: int = 0, tol: float = 1e-6) -> Spectrum:
    """A spectrum with orthonormal random eigenvectors for the given eigenvalues (r <= n: the rest implicit zeros)."""
    lam = torch.as_tensor(eigenvalues, dtype=F64)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=F64))
    return Spectrum(lam, q[:, : lam.numel()], n, tol, "test")


# ---------------------------------------------------------------------------------------------- per-step metrics
def test_gradient_overlaps_are_the_cosines_with_each_eigenvector():
    spec = _spectrum([-2.0, -0.5, 0.0, 1.0, 3.0], n=7)
    v = spec.eigenvectors
    g = 3.0 * v[:, 4] + 4.0 * v[:, 0]  # |g| = 5: cos 0.6 with the top, 0.8 with the most negative
    out = gradient_overlaps(g, spec)
    assert out["cos_top"] == pytest.approx(0.6) and out["cos_min"] == pytest.approx(0.8)
    assert out["cos_pos_mean"] == pytest.approx((0.6 + 0.0) / 2)  # eigenvalues 1 and 3 are positive
    assert out["cos_neg_mean"] == pytest.approx((0.8 + 0.0) / 2)  # -2 and -0.5; the 0 is neither
    assert gradient_overlaps(-g, spec) == out  # |cos|: the sign of an eigenvector is arbitrary


def test_gradient_overlaps_edge_cases():
    spec = _spectrum([1.0, 2.0], n=4)
    out = gradient_overlaps(spec.eigenvectors[:, 1], spec)
    assert out["cos_top"] == pytest.approx(1.0) and math.isnan(out["cos_min"]) and math.isnan(out["cos_neg_mean"])
    assert all(math.isnan(x) for x in gradient_overlaps(torch.zeros(4, dtype=F64), spec).values())
    empty = Spectrum(torch.zeros(0, dtype=F64), torch.zeros(4, 0, dtype=F64), 4, 0.0, "lowrank")
    assert all(math.isnan(x) for x in gradient_overlaps(torch.ones(4, dtype=F64), empty).values())


def test_spectrum_metrics_counts_extremes_and_local_exponents():
    lr = 0.1  # 2/lr = 20
    spec = _spectrum([-3.0, -1e-9, 2.0, 25.0], n=10, tol=1e-6)  # -1e-9 is within tol: zero; 6 implicit zeros
    m = spectrum_metrics(spec, lr)
    assert (m["n_pos"], m["n_neg"], m["n_zero"], m["rank"]) == (2, 1, 7, 3)
    assert m["n_above_2_over_lr"] == 1 and m["n_chaotic_local"] == 2  # lambda = -3 and lambda = 25
    assert m["eig_max"] == 25.0 and m["eig_min"] == -3.0
    assert m["lle_max"] == pytest.approx(math.log(1.5))  # |1 - 0.1 * 25|
    assert m["lle_min"] == pytest.approx(math.log(0.8))  # |1 - 0.1 * 2|
    flat = spectrum_metrics(_spectrum([0.5, 1.0], n=2), lr)  # full rank, nothing chaotic, no implicit zero
    assert flat["n_chaotic_local"] == 0 and flat["eig_min"] == 0.5 and flat["lle_max"] < 0


# ---------------------------------------------------------------------------------------------- run reductions
def test_tail_mean_uses_the_last_finite_values():
    res = _result([1.0, 2.0, 3.0, math.nan, 5.0])
    assert tail_mean(res, "m", 2) == pytest.approx(4.0)  # (3 + 5) / 2: the NaN is skipped
    assert tail_mean(res, "m", 100) == pytest.approx(11.0 / 4)
    two = RunResult(config=None, metrics={"m": np.array([[1.0, 10.0], [3.0, 30.0]]), "m__step": np.array([0, 1])})
    assert tail_mean(two, "m", 2, column=1) == pytest.approx(20.0)
    assert math.isnan(tail_mean(_result([math.nan, math.nan]), "m", 3))


def test_window_mean_is_half_open_in_steps():
    res = _result([1.0, 2.0, 4.0, 8.0], steps=[0, 10, 20, 30])
    assert window_mean(res, "m", 10, 30) == pytest.approx(3.0)  # steps 10 and 20, not 30
    assert window_mean(res, "m", 0, 31) == pytest.approx(15.0 / 4)
    assert math.isnan(window_mean(res, "m", 31, 100))


def test_trend_is_the_least_squares_slope_per_1000_steps():
    steps = np.arange(0, 500, 10)
    res = _result(0.002 * steps + 1.0, steps=steps)
    assert trend(res, "m") == pytest.approx(2.0)
    noisy = _result([0.0, 1.0, math.nan, 3.0], steps=[0, 1000, 2000, 3000])
    assert trend(noisy, "m") == pytest.approx(1.0)
    assert math.isnan(trend(_result([1.0]), "m"))


def test_first_step_reaching_uses_the_trailing_mean():
    res = _result([0.0, 0.0, 1.0, 1.0, 1.0], steps=[0, 10, 20, 30, 40])
    assert first_step_reaching(res, "m", 0.9) == 20
    assert first_step_reaching(res, "m", 0.9, window=2) == 30  # trailing mean of (1, 1) first at step 30
    assert first_step_reaching(res, "m", 1.5) is None
