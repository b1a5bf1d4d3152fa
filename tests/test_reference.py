"""The plain references of chaosnb/reference.py (used by the tests and book/a_proofs.md) against each other and
against the fast paths."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from chaosnb import reference as ref
from chaosnb.cgd import prune_plan
from chaosnb.curvature import hessian_spectrum, hvp_fn
from chaosnb.lyapunov import local_lyapunov_exponents
from chaosnb.models import FlatModel, build_model


def _small(seed: int = 0):
    flat = FlatModel(build_model("mlp", in_features=4, hidden=3, classes=3, activation="tanh", seed=seed,
                                 dtype=torch.float64))
    return flat, flat.initial_theta()


def test_random_batches_are_seeded():
    a = ref.random_batches(3, 5, 4, 3, seed=1)
    b = ref.random_batches(3, 5, 4, 3, seed=1)
    assert len(a) == 3 and a[0][0].shape == (5, 4) and a[0][0].dtype == torch.float64
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True))
    assert int(a[0][1].max()) < 3


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_tangent_recursion_equals_unrolled_jacobian(momentum):
    flat, theta0 = _small()
    batches = ref.random_batches(3, 6, 4, 3, seed=2)
    theta_k, jac = ref.unrolled_sgd_jacobian(flat, theta0, batches, 0.3, momentum)
    run = ref.tangent_map_along(flat, theta0, batches, 0.3, momentum)
    assert run["tangents"].shape == (4, theta0.numel(), theta0.numel())
    torch.testing.assert_close(run["tangents"][0], torch.eye(theta0.numel(), dtype=torch.float64))
    torch.testing.assert_close(jac, run["tangents"][-1], atol=1e-12, rtol=0)
    torch.testing.assert_close(theta_k, run["thetas"][-1], atol=1e-14, rtol=0)
    assert run["ftle_max"].shape == run["lle_max"].shape == (3,)
    # first step: the finite-time exponent is the local one
    assert run["ftle_max"][0] == pytest.approx(run["lle_max"][0], abs=1e-12)


def test_momentum_trajectories_and_explicit_sum():
    flat, theta0 = _small(1)
    batches = ref.random_batches(4, 6, 4, 3, seed=3)
    a = ref.momentum_unrolled_trajectory(flat, theta0, batches, 0.2, 0.9)
    b = ref.torch_sgd_trajectory(flat, theta0, batches, 0.2, 0.9)
    torch.testing.assert_close(a, b, atol=1e-14, rtol=0)
    plain = ref.torch_sgd_trajectory(flat, theta0, batches, 0.2, 0.0)
    torch.testing.assert_close(ref.momentum_unrolled_trajectory(flat, theta0, batches, 0.2, 0.0), plain,
                               atol=1e-14, rtol=0)
    run = ref.tangent_map_along(flat, theta0, batches, 0.2, 0.9)
    eq32 = ref.momentum_tangent_explicit_sum(run["hessians"], run["tangents"], 0.2, 0.9, first=0)
    torch.testing.assert_close(eq32, run["tangents"][1:], atol=1e-12, rtol=0)
    eq29 = ref.momentum_tangent_explicit_sum(run["hessians"], run["tangents"], 0.2, 0.9, first=1)
    assert float((eq29 - run["tangents"][1:]).abs().max()) > 1e-4


def test_pruned_step_jacobian_matches_eq_50():
    flat, theta = _small(2)
    (x, y), = ref.random_batches(1, 6, 4, 3, seed=4)
    spec = hessian_spectrum(flat.loss_fn(x, y), theta, method="dense")
    lr = 2.5 / spec.max_eigenvalue
    plan = prune_plan(spec, lr, "chaotic")
    jac = ref.pruned_step_jacobian(flat, theta, x, y, plan)
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
    (x, y), = ref.random_batches(1, 1, 20, 3, seed=5)
    loss = flat.loss_fn(x, y)
    spec = hessian_spectrum(loss, theta, method="lowrank")
    assert spec.implicit_zeros > 0
    eig, resid = ref.restricted_log_lyapunov_matrix(hvp_fn(loss, theta), spec.eigenvectors, 0.1)
    lle = np.sort(local_lyapunov_exponents(spec.eigenvalues, 0.1).numpy())
    np.testing.assert_allclose(eig, lle, atol=1e-10)
    assert resid < 1e-12


def test_matrix_log_series():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    a = (q * np.linspace(0.5, 1.5, 5)) @ q.T
    np.testing.assert_allclose(ref.matrix_log_series(a, 200), scipy.linalg.logm(a), atol=1e-12)
    np.testing.assert_allclose(ref.matrix_log_series(a, 200, as_printed=True), -scipy.linalg.logm(a), atol=1e-12)


def test_scalar_momentum_exponents_break_the_bound():
    out = ref.scalar_momentum_exponents(-0.1, 0.1, 0.9, 400)
    assert out["bound"] == pytest.approx(np.full(400, math.log(1.01)))
    assert out["ftle"][0] == pytest.approx(math.log(1.01))
    assert out["rate"] == pytest.approx(math.log((1.91 + math.sqrt(1.91**2 - 3.6)) / 2))
    assert out["ftle"][-1] > out["bound"][-1] + 0.04
    plain = ref.scalar_momentum_exponents(-0.1, 0.1, 0.0, 10)
    np.testing.assert_allclose(plain["ftle"], plain["bound"], atol=1e-14)
