"""Tests of the helpers appended to chaosnb/analysis.py for book/a_proofs.md and book/b3_toy.md."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from chaosnb import analysis as an
from chaosnb.cgd import prune_plan
from chaosnb.curvature import hessian_spectrum, hvp_fn
from chaosnb.distance import linear_plus_walk_coefficients, simulate_linear_plus_walk
from chaosnb.lyapunov import local_lyapunov_exponents
from chaosnb.models import FlatModel, build_model
from chaosnb.toy import sgd_path


def _small(seed: int = 0):
    flat = FlatModel(build_model("mlp", in_features=4, hidden=3, classes=3, activation="tanh", seed=seed,
                                 dtype=torch.float64))
    return flat, flat.initial_theta()


def test_random_batches_are_seeded():
    a = an.random_batches(3, 5, 4, 3, seed=1)
    b = an.random_batches(3, 5, 4, 3, seed=1)
    assert len(a) == 3 and a[0][0].shape == (5, 4) and a[0][0].dtype == torch.float64
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True))
    assert int(a[0][1].max()) < 3


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_tangent_recursion_equals_unrolled_jacobian(momentum):
    flat, theta0 = _small()
    batches = an.random_batches(3, 6, 4, 3, seed=2)
    theta_k, jac = an.unrolled_sgd_jacobian(flat, theta0, batches, 0.3, momentum)
    run = an.tangent_map_along(flat, theta0, batches, 0.3, momentum)
    assert run["tangents"].shape == (4, theta0.numel(), theta0.numel())
    torch.testing.assert_close(run["tangents"][0], torch.eye(theta0.numel(), dtype=torch.float64))
    torch.testing.assert_close(jac, run["tangents"][-1], atol=1e-12, rtol=0)
    torch.testing.assert_close(theta_k, run["thetas"][-1], atol=1e-14, rtol=0)
    assert run["ftle_max"].shape == run["lle_max"].shape == (3,)
    # first step: the finite-time exponent is the local one
    assert run["ftle_max"][0] == pytest.approx(run["lle_max"][0], abs=1e-12)


def test_momentum_trajectories_and_explicit_sum():
    flat, theta0 = _small(1)
    batches = an.random_batches(4, 6, 4, 3, seed=3)
    a = an.momentum_unrolled_trajectory(flat, theta0, batches, 0.2, 0.9)
    b = an.torch_sgd_trajectory(flat, theta0, batches, 0.2, 0.9)
    torch.testing.assert_close(a, b, atol=1e-14, rtol=0)
    plain = an.torch_sgd_trajectory(flat, theta0, batches, 0.2, 0.0)
    torch.testing.assert_close(an.momentum_unrolled_trajectory(flat, theta0, batches, 0.2, 0.0), plain,
                               atol=1e-14, rtol=0)
    run = an.tangent_map_along(flat, theta0, batches, 0.2, 0.9)
    eq32 = an.momentum_tangent_explicit_sum(run["hessians"], run["tangents"], 0.2, 0.9, first=0)
    torch.testing.assert_close(eq32, run["tangents"][1:], atol=1e-12, rtol=0)
    eq29 = an.momentum_tangent_explicit_sum(run["hessians"], run["tangents"], 0.2, 0.9, first=1)
    assert float((eq29 - run["tangents"][1:]).abs().max()) > 1e-4


def test_pruned_step_jacobian_matches_eq_50():
    flat, theta = _small(2)
    (x, y), = an.random_batches(1, 6, 4, 3, seed=4)
    spec = hessian_spectrum(flat.loss_fn(x, y), theta, method="dense")
    lr = 2.5 / spec.max_eigenvalue
    plan = prune_plan(spec, lr, "chaotic")
    jac = an.pruned_step_jacobian(flat, theta, x, y, plan)
    v, lam = spec.eigenvectors, spec.eigenvalues
    keep = v[:, plan.kept] @ v[:, plan.kept].T
    expected = torch.eye(theta.numel(), dtype=torch.float64) - lr * keep @ spec.to_dense()
    torch.testing.assert_close(jac, expected, atol=1e-12, rtol=0)
    assert plan.n_pruned > 0
    assert float(torch.linalg.svdvals(jac).max()) <= 1 + 1e-12
    assert bool((lam[plan.pruned] > 2 / lr).any())


def test_restricted_log_lyapunov_matrix_on_a_low_rank_hessian():
    flat = FlatModel(build_model("mlp", in_features=20, hidden=5, classes=3, activation="tanh", seed=3,
                                 dtype=torch.float64))
    theta = flat.initial_theta()
    (x, y), = an.random_batches(1, 1, 20, 3, seed=5)
    loss = flat.loss_fn(x, y)
    spec = hessian_spectrum(loss, theta, method="lowrank")
    assert spec.implicit_zeros > 0
    eig, resid = an.restricted_log_lyapunov_matrix(hvp_fn(loss, theta), spec.eigenvectors, 0.1)
    lle = np.sort(local_lyapunov_exponents(spec.eigenvalues, 0.1).numpy())
    np.testing.assert_allclose(eig, lle, atol=1e-10)
    assert resid < 1e-12


def test_matrix_log_series():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    a = (q * np.linspace(0.5, 1.5, 5)) @ q.T
    np.testing.assert_allclose(an.matrix_log_series(a, 200), scipy.linalg.logm(a), atol=1e-12)
    np.testing.assert_allclose(an.matrix_log_series(a, 200, as_printed=True), -scipy.linalg.logm(a), atol=1e-12)


def test_scalar_momentum_exponents_break_the_bound():
    out = an.scalar_momentum_exponents(-0.1, 0.1, 0.9, 400)
    assert out["bound"] == pytest.approx(np.full(400, math.log(1.01)))
    assert out["ftle"][0] == pytest.approx(math.log(1.01))
    assert out["rate"] == pytest.approx(math.log((1.91 + math.sqrt(1.91**2 - 3.6)) / 2))
    assert out["ftle"][-1] > out["bound"][-1] + 0.04
    plain = an.scalar_momentum_exponents(-0.1, 0.1, 0.0, 10)
    np.testing.assert_allclose(plain["ftle"], plain["bound"], atol=1e-14)


def test_distance_moments():
    d = np.array([[1.0, 2.0], [3.0, 2.0]])
    m = an.distance_moments(d)
    np.testing.assert_allclose(m["mean"], [2.0, 2.0])
    np.testing.assert_allclose(m["rms"], [math.sqrt(5.0), 2.0])
    np.testing.assert_allclose(m["mean_se"], [math.sqrt(2.0) / math.sqrt(2.0), 0.0])
    assert m["rms_se"][1] == 0.0


def test_fit_distance_curve_se_recovers_coefficients():
    t = np.arange(1, 101)
    d = simulate_linear_plus_walk(100, 20, 0.1, 0.05, walks=400, seed=1, eps=0.1)
    fit, se_a, se_b = an.fit_distance_curve_se(t, d, 0.1)
    a, b = linear_plus_walk_coefficients(20, 0.1, 0.05)
    assert se_a > 0 and se_b > 0
    assert abs(fit.a - a) < 5 * se_a and abs(fit.b - b) < 5 * se_b


def test_toy_phase_steps():
    ph = an.toy_phase_steps(sgd_path(lr=0.1, steps=300, noise_std=0.1, seed=0))
    assert ph["ordered"]
    assert 0 <= ph["negative_first"] < ph["positive"] < ph["negative_again"]
    # a path started at the minimum in x with y = 0 never sees the first two phases in order
    flat_start = an.toy_phase_steps(sgd_path(start=(0.5, 0.0), lr=0.1, steps=50))
    assert not flat_start["ordered"]
