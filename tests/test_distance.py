"""Theorems A.8-A.10: initialisation distances, random walks and distance fits against Monte Carlo."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from chaosnb.distance import (
    distance_moments,
    expected_init_distance,
    expected_sq_init_distance,
    expected_sq_init_distance_module,
    fit_distance_curve,
    fit_distance_curve_se,
    linear_plus_walk_coefficients,
    monte_carlo_init_distance,
    paper_a8_formula,
    random_walk_expected_distance,
    random_walk_mean_distance,
    simulate_linear_plus_walk,
    simulate_random_walks,
    sq_init_distance_variance,
)
from chaosnb.models import build_model, cnn, mlp

# ---------------------------------------------------------------- Theorem A.8


def test_paper_formula_reproduces_6_38_and_is_sqrt2_too_large():
    assert round(paper_a8_formula((784, 20, 10)), 2) == 6.38
    # the printed substitution: sqrt(4*30/3 + 4*20/(3*784) + 4*10/(3*20))
    assert paper_a8_formula() == pytest.approx(math.sqrt(4 * 30 / 3 + 4 * 20 / (3 * 784) + 4 * 10 / (3 * 20)))
    for sizes in [(784, 20, 10), (256, 20, 10)]:
        assert paper_a8_formula(sizes) / expected_init_distance(sizes) == pytest.approx(math.sqrt(2))


def test_closed_form_values_and_module_version_agree():
    expected = 2 / 3 * 30 + 2 * 20 / (3 * 784) + 2 * 10 / 60
    assert expected_sq_init_distance((784, 20, 10)) == pytest.approx(expected)
    assert expected_init_distance((784, 20, 10)) == pytest.approx(4.5111, abs=1e-4)
    assert expected_init_distance((256, 20, 10)) == pytest.approx(4.5150, abs=1e-4)
    for sizes in [(784, 20, 10), (256, 20, 10)]:
        closed = expected_sq_init_distance(sizes)
        assert expected_sq_init_distance_module(mlp(*sizes)) == pytest.approx(closed)
    assert expected_sq_init_distance((5, 3), bias=False) == pytest.approx(15 * 2 / 15)
    # conv fan_in = in_channels * kh * kw
    conv = nn.Conv2d(3, 4, (3, 5))
    assert expected_sq_init_distance_module(conv) == pytest.approx((4 * 45 + 4) * 2 / (3 * 45))
    with pytest.raises(ValueError, match="unsupported"):
        expected_sq_init_distance_module(nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2)))
    # Jensen: the delta-method mean lies just below the RMS
    rms = expected_init_distance((784, 20, 10))
    mean = expected_init_distance((784, 20, 10), second_order=True)
    assert 0 < rms - mean < 1e-3


@pytest.mark.parametrize("sizes", [(784, 20, 10), (256, 20, 10)])
def test_closed_form_matches_monte_carlo_over_real_default_initialisations(sizes):
    state = torch.random.get_rng_state()
    mc = monte_carlo_init_distance(sizes, pairs=2000, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())
    assert mc.mean == pytest.approx(expected_init_distance(sizes), rel=0.01)
    assert abs(mc.mean - expected_init_distance(sizes, second_order=True)) < 4 * mc.sem
    assert np.mean(mc.distances**2) == pytest.approx(expected_sq_init_distance(sizes), rel=0.01)
    assert np.var(mc.distances**2, ddof=1) == pytest.approx(sq_init_distance_variance(sizes), rel=0.15)
    assert mc.mean < paper_a8_formula(sizes) / 1.35  # far from the paper's 6.38


def test_monte_carlo_with_a_model_factory_matches_for_the_paper_models():
    mc = monte_carlo_init_distance(lambda: mlp(256, 20, 10), pairs=300, seed=0)
    assert mc.mean == pytest.approx(expected_init_distance(build_model("mlp")), rel=0.01)
    mc = monte_carlo_init_distance(cnn, pairs=300, seed=0)
    assert mc.mean == pytest.approx(expected_init_distance(build_model("cnn")), rel=0.01)
    # reproducible under the seed
    again = monte_carlo_init_distance(cnn, pairs=5, seed=0)
    np.testing.assert_array_equal(again.distances, mc.distances[:5])


# ---------------------------------------------------------------- Theorem A.9


@pytest.mark.parametrize("D", [5, 50])
def test_random_walk_rms_and_exact_mean_match_simulation(D):
    T, sigma, walks = 100, 0.3, 2000
    d = simulate_random_walks(T, D, sigma, walks=walks, seed=D)
    assert d.shape == (walks, T)
    t = np.array([1, 10, 100])
    rms = np.sqrt(np.mean(d[:, t - 1] ** 2, axis=0))
    rtol = 4 * math.sqrt(0.5 / (D * walks))  # 4 standard errors of an RMS over chi^2_D samples
    np.testing.assert_allclose(rms, random_walk_expected_distance(t, D, sigma), rtol=rtol)
    mean, sem = d[:, t - 1].mean(0), d[:, t - 1].std(0, ddof=1) / math.sqrt(walks)
    assert np.all(np.abs(mean - random_walk_mean_distance(t, D, sigma)) < 4 * sem)
    # the appendix's sqrt(2TD) sigma is the RMS: it exceeds the mean by ~1/(4D)
    ratio = random_walk_mean_distance(T, D, sigma) / random_walk_expected_distance(T, D, sigma)
    assert ratio == pytest.approx(1 - 1 / (4 * D), abs=1 / (8 * D**2) + 1e-3)


def test_random_walk_is_seeded():
    a, b = simulate_random_walks(5, 3, 1.0, 4, seed=7), simulate_random_walks(5, 3, 1.0, 4, seed=7)
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- Theorem A.10


def test_fit_recovers_exact_coefficients_on_noiseless_curves():
    t = np.arange(0, 500, 7.0)
    for eps, a, b in [(0.1, 3e-4, 2e-7), (10.0, 0.5, 0.0), (0.0, 0.0, 1e-3)]:
        fit = fit_distance_curve(t, np.sqrt(eps**2 + a * t + b * t**2), eps)
        assert fit.a == pytest.approx(a, abs=1e-12 + 1e-8 * a)
        assert fit.b == pytest.approx(b, abs=1e-14 + 1e-8 * b)
        assert fit.rss < 1e-18
        np.testing.assert_allclose(fit(t), np.sqrt(eps**2 + a * t + b * t**2), rtol=1e-10, atol=1e-12)


def test_fit_recovers_a_and_b_from_simulated_linear_plus_walk():
    T, D, sigma, alpha, eps = 100, 400, 0.05, 0.15, 0.5
    a, b = linear_plus_walk_coefficients(D, sigma, alpha)
    assert (a, b) == pytest.approx((2 * D * sigma**2, alpha**2))
    d = simulate_linear_plus_walk(T, D, sigma, alpha, walks=1000, seed=0, eps=eps)
    t = np.arange(1, T + 1)
    fit = fit_distance_curve(t, np.sqrt(np.mean(d**2, axis=0)), eps)
    assert fit.a == pytest.approx(a, rel=0.03)
    assert fit.b == pytest.approx(b, rel=0.03)


def test_linear_plus_walk_lr_scaling():
    T, D, sigma, alpha, lr = 50, 200, 0.5, 2.0, 0.1
    a, b = linear_plus_walk_coefficients(D, sigma, alpha, lr)
    assert (a, b) == pytest.approx((2 * D * sigma**2 * lr**2, alpha**2 * lr**2))
    d = simulate_linear_plus_walk(T, D, sigma, alpha, walks=400, seed=3, lr=lr)
    t = np.arange(1, T + 1)
    np.testing.assert_allclose(np.mean(d**2, axis=0)[[9, 49]], (a * t + b * t**2)[[9, 49]], rtol=0.03)
    # no drift: pure random walk, scaled by lr
    d0 = simulate_linear_plus_walk(T, D, sigma, 0.0, walks=400, seed=3, lr=lr)
    expected = lr * random_walk_expected_distance(T, D, sigma)
    assert np.sqrt(np.mean(d0[:, -1] ** 2)) == pytest.approx(expected, rel=0.03)


def test_distance_moments():
    d = np.array([[1.0, 2.0], [3.0, 2.0]])
    m = distance_moments(d)
    np.testing.assert_allclose(m["mean"], [2.0, 2.0])
    np.testing.assert_allclose(m["rms"], [math.sqrt(5.0), 2.0])
    np.testing.assert_allclose(m["mean_se"], [math.sqrt(2.0) / math.sqrt(2.0), 0.0])
    assert m["rms_se"][1] == 0.0


def test_fit_distance_curve_se_recovers_coefficients():
    t = np.arange(1, 101)
    d = simulate_linear_plus_walk(100, 20, 0.1, 0.05, walks=400, seed=1, eps=0.1)
    fit, se_a, se_b = fit_distance_curve_se(t, d, 0.1)
    a, b = linear_plus_walk_coefficients(20, 0.1, 0.05)
    assert se_a > 0 and se_b > 0
    assert abs(fit.a - a) < 5 * se_a and abs(fit.b - b) < 5 * se_b
