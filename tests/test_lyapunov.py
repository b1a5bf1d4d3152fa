"""Lyapunov exponents: the tangent map against autograd through unrolled training, closed forms for constant
Hessians, the determinant sum rule, known exponents of the Henon and logistic maps, long horizons, the
Theorem A.6 bound, checkpointing, and the structured (low-rank Y_t - I) path against the full SVD."""

import io
import math

import mpmath
import pytest
import torch
from torch.func import grad, jacrev

from chaosnb.curvature import dense_hessian, hessian_spectrum
from chaosnb.lyapunov import (
    STRUCTURED_MAX_LOG2_SCALE,
    FiniteTimeLyapunov,
    TangentMap,
    _gram_lower,
    _ldexp,
    finite_time_exponents,
    finite_time_lyapunov,
    graded_svd,
    henon_map,
    local_lyapunov_exponents,
    log_abs_det_jacobian,
    log_det_sum,
    logistic_map,
    max_local_exponent,
    mlce_upper_bound,
    qr_lyapunov_spectrum,
)
from chaosnb.models import make_flat_model
from chaosnb.perturb import perturbation_direction

F64 = torch.float64


def tiny_problem(steps: int, batch: int = 2, activation: str = "sigmoid", seed: int = 0):
    """A 4-3-3 MLP (27 parameters) in float64 and a fixed sequence of random mini-batches."""
    flat, theta0 = make_flat_model("mlp", activation, seed, F64, in_features=4, hidden=3, classes=3)
    gen = torch.Generator().manual_seed(seed + 1)
    xs = torch.randn(steps, batch, 4, generator=gen, dtype=F64)
    ys = torch.randint(0, 3, (steps, batch), generator=gen)
    return flat, theta0, xs, ys


def unrolled_training(flat, xs, ys, lr: float, momentum: float):
    """theta_0 -> theta_k for SGD as torch.optim.SGD does it: buf <- beta buf + g; theta <- theta - lr buf."""

    def run(theta0: torch.Tensor) -> torch.Tensor:
        theta, buf = theta0, None
        for x, y in zip(xs, ys, strict=True):
            g = grad(flat.loss)(theta, x, y)
            buf = g if buf is None else momentum * buf + g
            theta = theta - lr * buf
        return theta

    return run


def trajectory(flat, theta0, xs, ys, lr: float, momentum: float) -> list[torch.Tensor]:
    """theta_0, ..., theta_{k-1}: the points where the step Hessians are taken."""
    thetas, theta, buf = [], theta0, None
    for x, y in zip(xs, ys, strict=True):
        thetas.append(theta)
        g = grad(flat.loss)(theta, x, y)
        buf = g if buf is None else momentum * buf + g
        theta = theta - lr * buf
    return thetas


def random_orthogonal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=F64))
    return q


def random_symmetric(n: int, gen: torch.Generator) -> torch.Tensor:
    a = torch.randn(n, n, generator=gen, dtype=F64) / math.sqrt(n)
    return 0.5 * (a + a.T)


# ----------------------------------------------------------------------------------------------------------
# Tier 1: the tangent map is the Jacobian of unrolled training (Theorems A.1 and A.3)
# ----------------------------------------------------------------------------------------------------------

def test_unrolled_loop_matches_torch_optim_sgd():
    flat, theta0, xs, ys = tiny_problem(steps=4)
    p = torch.nn.Parameter(theta0.clone())
    opt = torch.optim.SGD([p], lr=0.5, momentum=0.9)
    for x, y in zip(xs, ys, strict=True):
        opt.zero_grad()
        flat.loss(p, x, y).backward()
        opt.step()
    expected = unrolled_training(flat, xs, ys, lr=0.5, momentum=0.9)(theta0)
    assert torch.allclose(p.detach(), expected, rtol=0, atol=1e-13)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_tangent_map_equals_jacobian_of_unrolled_training(momentum):
    lr, steps = 0.5, 5
    flat, theta0, xs, ys = tiny_problem(steps)
    reference = jacrev(unrolled_training(flat, xs, ys, lr, momentum))(theta0)
    tm = TangentMap(theta0.numel(), lr, momentum)
    for theta, x, y in zip(trajectory(flat, theta0, xs, ys, lr, momentum), xs, ys, strict=True):
        tm.step(dense_hessian(flat.loss_fn(x, y), theta))
    assert tm.t == steps
    y_map = tm.matrix()
    assert (reference - torch.eye(theta0.numel(), dtype=F64)).abs().max() > 0.05  # non-trivial dynamics
    assert torch.allclose(y_map, reference, rtol=0, atol=1e-8)


def test_momentum_tangent_map_differs_from_plain_sgd():
    """Guard against the momentum buffer being silently ignored."""
    lr, steps = 0.5, 5
    flat, theta0, xs, ys = tiny_problem(steps)
    plain = jacrev(unrolled_training(flat, xs, ys, lr, 0.0))(theta0)
    heavy = jacrev(unrolled_training(flat, xs, ys, lr, 0.9))(theta0)
    assert (plain - heavy).abs().max() > 1e-2


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_tangent_map_lowrank_pairs_equal_dense(momentum):
    lr, steps = 0.5, 5
    flat, theta0, xs, ys = tiny_problem(steps)
    n = theta0.numel()
    dense, spec_map, pair_map = (TangentMap(n, lr, momentum) for _ in range(3))
    for theta, x, y in zip(trajectory(flat, theta0, xs, ys, lr, momentum), xs, ys, strict=True):
        loss = flat.loss_fn(x, y)
        spec = hessian_spectrum(loss, theta, method="lowrank", max_rank_fraction=0.9)
        assert spec.method == "lowrank" and not spec.info["fallback"]
        assert spec.eigenvalues.numel() < n  # genuinely low rank: the complement is J = I
        dense.step(dense_hessian(loss, theta))
        spec_map.step(spec)
        pair_map.step((spec.eigenvalues, spec.eigenvectors))
    assert torch.allclose(spec_map.matrix(), dense.matrix(), rtol=0, atol=1e-8)
    assert torch.equal(spec_map.matrix(), pair_map.matrix())


def test_cgd_projected_pair_is_the_cgd_jacobian():
    """A kept subset K of eigenpairs as a pair gives J = I - lr V_K diag(lam_K) V_K^T = I - lr P H."""
    n, lr = 6, 0.3
    h = random_symmetric(n, torch.Generator().manual_seed(3))
    lam, vecs = torch.linalg.eigh(h)
    keep = lam > 0
    p = vecs[:, keep] @ vecs[:, keep].T
    tm = TangentMap(n, lr)
    tm.step((lam[keep], vecs[:, keep]))
    assert keep.any() and (~keep).any()
    assert torch.allclose(tm.matrix(), torch.eye(n, dtype=F64) - lr * p @ h, rtol=0, atol=1e-13)


def test_step_rejects_wrong_shapes():
    tm = TangentMap(4, 0.1)
    with pytest.raises(ValueError):
        tm.step(torch.eye(3, dtype=F64))
    with pytest.raises(ValueError):
        tm.step((torch.ones(2, dtype=F64), torch.ones(4, 3, dtype=F64)))
    with pytest.raises(TypeError):
        tm.step([torch.ones(4)])


# ----------------------------------------------------------------------------------------------------------
# Tier 2: closed forms (Theorem A.5), the sum rule, momentum on a constant Hessian
# ----------------------------------------------------------------------------------------------------------

def test_constant_hessian_exponents_are_local_exponents():
    lr, t = 0.5, 12
    h = torch.tensor([-0.6, -0.2, 0.0, 0.3, 1.0, 3.0, 3.8, 4.0], dtype=F64)  # 4.0 = 2/lr: |1 - lr h| = 1
    q = random_orthogonal(h.numel(), seed=0)
    a = (q * h) @ q.T  # the Hessian of 0.5 theta^T A theta
    tm = TangentMap(h.numel(), lr)
    for _ in range(t):
        tm.step(a)
    expected = torch.sort(torch.log(torch.abs(1.0 - lr * h)), descending=True).values
    ft = finite_time_lyapunov(tm, tol=1e-12)  # the two edge exponents (|1 - lr h| = 1) are 0 +- rounding
    assert ft.num_unresolved == 0
    assert torch.allclose(ft.exponents, expected, rtol=0, atol=1e-10)
    assert torch.allclose(torch.sort(local_lyapunov_exponents(h, lr), descending=True).values, expected,
                          rtol=0, atol=1e-15)
    # chaotic iff lambda < 0 or lambda > 2/lr (here: the two negative eigenvalues); 0 and 2/lr are edges
    assert ft.chaotic_dim == 2 and ft.non_chaotic_dim == 6 and ft.chaotic_dim_certain
    chaotic = ft.chaotic_subspace()
    assert torch.allclose(chaotic @ chaotic.T, q[:, :2] @ q[:, :2].T, atol=1e-10)
    basis = torch.cat([chaotic, ft.non_chaotic_subspace()], dim=1)
    assert torch.allclose(basis.T @ basis, torch.eye(8, dtype=F64), atol=1e-12)


def test_local_exponents_edge_cases():
    lle = local_lyapunov_exponents([0.0, 2.0, 4.0, -2.0, 6.0], lr=0.5)
    assert lle[0] == 0.0 and lle[1] == -math.inf and lle[2] == 0.0
    assert torch.allclose(lle[3:], torch.log(torch.tensor([2.0, 2.0], dtype=F64)))
    assert lle.dtype == F64


def test_eigenvalue_at_one_over_lr_is_unresolved_minus_inf():
    lr = 0.5
    h = torch.tensor([-0.6, 0.3, 1.0, 2.0], dtype=F64)  # 2.0 = 1/lr: J kills that direction
    q = random_orthogonal(4, seed=1)
    tm = TangentMap(4, lr)
    for _ in range(10):
        tm.step((q * h) @ q.T)
    ft = tm.lyapunov()
    assert ft.num_unresolved == 1 and ft.exponents[-1] == -math.inf
    assert ft.min_exponent == pytest.approx(math.log(0.5), abs=1e-10)
    assert ft.resolution < ft.min_exponent
    assert ft.non_chaotic_dim == 3


def test_untouched_directions_are_never_chaotic_at_default_tol():
    """Directions no step touched have sigma = 1 +- eps: with the paper's tol = 0 they must not count as
    chaotic (the old rule counted 17 of them here), and the count is uncertain (they sit at 0 +- err)."""
    n, lr = 120, 0.1
    vecs, _ = torch.linalg.qr(torch.randn(n, 4, generator=torch.Generator().manual_seed(13), dtype=F64))
    lam1, lam2 = torch.tensor([-2.0, -1.0, 3.0, 30.0], dtype=F64), torch.tensor([-1.0, 0.5, -4.0, 25.0], dtype=F64)
    tm = TangentMap(n, lr)
    tm.step((lam1, vecs))
    tm.step((lam2, vecs))
    exact = torch.sort(torch.log(torch.abs((1 - lr * lam1) * (1 - lr * lam2))) / 2, descending=True).values
    assert int((exact > 0).sum()) == 3
    for method in ("full", "structured"):
        ft = tm.lyapunov(method=method)
        assert ft.chaotic_dim == 3 and ft.non_chaotic_dim == n - 3
        assert torch.allclose(ft.exponents[:3], exact[:3], rtol=0, atol=1e-13)
        assert not ft.chaotic_dim_certain and ft.num_uncertain >= 1  # exactly-0 exponents: 0 +- err
        chaotic = ft.chaotic_subspace()
        assert torch.linalg.matrix_norm(chaotic @ chaotic.T - vecs[:, [3, 0, 1]] @ vecs[:, [3, 0, 1]].T) < 1e-10
        edge = tm.lyapunov(1e-12, method=method)  # an explicit edge band: certain
        assert edge.chaotic_dim == 3 and edge.chaotic_dim_certain and edge.num_uncertain == 0
    ft = tm.lyapunov(method="full")  # an exponent inside its own error bar is uncertain at any tol
    close = FiniteTimeLyapunov(ft.exponents, ft.vectors, ft.t, ft.resolution, tol=float(exact[2]))
    assert close.chaotic_dim == 2 and not close.chaotic_dim_certain


def test_sum_rule_for_non_commuting_hessians():
    n, lr, t = 6, 0.3, 15
    gen = torch.Generator().manual_seed(0)
    hs = [random_symmetric(n, gen) * 3.0 for _ in range(t)]
    tm = TangentMap(n, lr)
    for h in hs:
        tm.step(h)
    ft = tm.lyapunov()
    assert ft.num_unresolved == 0
    assert ft.exponent_sum == pytest.approx(log_det_sum(hs, lr), abs=1e-8)
    mean_lle = torch.stack([torch.sort(local_lyapunov_exponents(torch.linalg.eigvalsh(h), lr),
                                       descending=True).values for h in hs]).mean(0)
    assert (ft.exponents - mean_lle).abs().max() > 1e-3  # non-commuting: the spectrum is not the mean LLE
    # the same sum for Spectrum-like pairs, including a low-rank one (implicit zeros contribute log 1 = 0)
    lam, vecs = torch.linalg.eigh(hs[0])
    assert log_abs_det_jacobian((lam, vecs), lr) == pytest.approx(log_abs_det_jacobian(hs[0], lr), abs=1e-12)
    assert log_abs_det_jacobian((lam[:2], vecs[:, :2]), lr) == pytest.approx(
        float(torch.log(torch.abs(torch.linalg.det(torch.eye(n, dtype=F64) - lr * (vecs[:, :2] * lam[:2])
                                                   @ vecs[:, :2].T)))), abs=1e-12)


def test_momentum_constant_hessian_three_term_recurrence_and_a6_violation():
    """With momentum each eigendirection obeys y_{t+1} = (1 + beta - lr lam) y_t - beta y_{t-1}, y_0 = 1,
    y_1 = 1 - lr lam. Negative curvature then grows at log of the companion root, faster than the SGD local
    exponent log(1 - lr lam): Theorem A.6's bound is a statement about momentum-free SGD only."""
    lr, beta = 0.1, 0.9
    lam = torch.tensor([-0.1, 0.5, 5.0, 25.0], dtype=F64)  # 25 > 2/lr: SGD-chaotic, momentum-stable
    tm = TangentMap(4, lr, beta)
    ys = [torch.ones(4, dtype=F64), 1.0 - lr * lam]
    tm.step(torch.diag(lam))
    assert torch.allclose(torch.diagonal(tm.matrix()), ys[1], rtol=0, atol=1e-15)
    for _ in range(40):
        tm.step(torch.diag(lam))
        ys.append((1.0 + beta - lr * lam) * ys[-1] - beta * ys[-2])
        assert torch.allclose(torch.diagonal(tm.matrix()), ys[-1], rtol=1e-12, atol=1e-14)
    assert abs(float(tm.matrix()[3, 3])) < 1.0 < 1.5**40  # SGD would have grown it like |1 - 2.5|^t

    t = 3000
    c = 1.0 + beta - lr * float(lam[0])
    root = 0.5 * (c + math.sqrt(c * c - 4.0 * beta))
    h = torch.diag(lam[:3])
    tm = TangentMap(3, lr, beta)
    for _ in range(t):
        tm.step(h)
    sgd_bound = float(mlce_upper_bound([max_local_exponent(h, lr)] * t)[-1])
    assert sgd_bound == pytest.approx(math.log(1.0 + lr * 0.1), abs=1e-14)
    assert tm.lyapunov().max_exponent == pytest.approx(math.log(root), abs=1e-2)
    assert tm.lyapunov().max_exponent > sgd_bound + 0.03


# ----------------------------------------------------------------------------------------------------------
# Tier 3: the QR algorithm on maps with known exponents
# ----------------------------------------------------------------------------------------------------------

def test_henon_map_spectrum():
    f, jac, x0 = henon_map(1.4, 0.3)
    ex = qr_lyapunov_spectrum(x0=x0, f=f, jac=jac, steps=20000, transient=200)
    assert ex.shape == (2,) and ex.dtype == F64
    assert float(ex[0]) == pytest.approx(0.4192, abs=0.01)
    assert float(ex[1]) == pytest.approx(-1.6232, abs=0.01)
    assert float(ex.sum()) == pytest.approx(math.log(0.3), abs=1e-10)
    top = qr_lyapunov_spectrum(x0=x0, f=f, jac=jac, steps=20000, transient=200, num_exponents=1)
    assert top.shape == (1,) and float(top[0]) == pytest.approx(float(ex[0]), abs=1e-12)


def test_logistic_map_exponent_is_ln2():
    f, jac, x0 = logistic_map(4.0)
    ex = qr_lyapunov_spectrum(x0=x0, f=f, jac=jac, steps=20000, transient=100)
    assert float(ex[0]) == pytest.approx(math.log(2.0), abs=0.01)


def test_qr_on_constant_non_normal_jacobian_gives_log_abs_eigenvalues():
    p = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=F64)
    j = p @ torch.tensor([[2.0, 5.0], [0.0, -0.5]], dtype=F64) @ torch.linalg.inv(p)
    ex = qr_lyapunov_spectrum([j] * 2000)
    assert torch.allclose(ex, torch.log(torch.tensor([2.0, 0.5], dtype=F64)), atol=5e-3)
    # the finite-time (singular value) exponents of the same map differ at short times
    assert abs(finite_time_exponents(j, 1).max_exponent - math.log(2.0)) > 0.1
    with pytest.raises(ValueError):
        qr_lyapunov_spectrum([j] * 3, transient=3)


# ----------------------------------------------------------------------------------------------------------
# Tier 4: long horizons, Theorem A.6 on a trained model, checkpointing
# ----------------------------------------------------------------------------------------------------------

def test_long_horizon_no_overflow_and_unresolved_marked():
    steps = 2000
    target = torch.tensor([0.5, 0.495, -0.5, -1.0], dtype=F64)
    factors = torch.exp(target) * torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=F64)
    q = random_orthogonal(4, seed=2)
    lr = 1.0
    h = (q * (1.0 - factors)) @ q.T  # J = I - lr H = Q diag(factors) Q^T
    tm = TangentMap(4, lr)
    for _ in range(steps):
        tm.step(h)
    assert not torch.isfinite(tm.matrix()).all()  # the true Y_t ~ e^1000 overflows float64
    y_scaled, log_scale = tm.scaled()
    assert torch.isfinite(y_scaled).all() and y_scaled.abs().max() < 1.0 and log_scale > 690
    full = tm.lyapunov(method="full")  # the formed, scaled Y_t: only ~36/t below the top is resolvable
    assert full.t == steps and not torch.isnan(full.exponents).any()
    assert torch.allclose(full.exponents[:2], target[:2], rtol=0, atol=1e-9)
    assert full.num_unresolved == 2 and torch.all(full.exponents[2:] == -math.inf)
    assert full.min_exponent == pytest.approx(0.495, abs=1e-9)
    assert full.chaotic_dim == 2 and full.resolution > 0.48
    assert not full.chaotic_dim_certain  # a +0.3 exponent would also have been unresolved
    assert torch.all(full.error_estimate[:2] < 1e-12) and torch.all(torch.isinf(full.error_estimate[2:]))
    ft = tm.lyapunov()  # the graded representation resolves the whole spectrum
    assert ft.method == "graded" and ft.num_unresolved == 0 and tm.reorthonormalisations > 0
    assert torch.allclose(ft.exponents, target, rtol=0, atol=1e-12)
    assert torch.all(ft.error_estimate < 1e-12) and ft.chaotic_dim == 2 and ft.chaotic_dim_certain
    assert ft.exponent_sum == pytest.approx(float(target.sum()), abs=1e-12)  # the determinant sum rule
    chaotic = ft.chaotic_subspace()
    assert torch.linalg.matrix_norm(chaotic @ chaotic.T - q[:, :2] @ q[:, :2].T) < 1e-10


def test_long_horizon_contracting_map_underflow():
    target = torch.tensor([-0.5, -0.51], dtype=F64)
    q = random_orthogonal(2, seed=3)
    tm = TangentMap(2, 1.0)
    for _ in range(2000):
        tm.step((q * (1.0 - torch.exp(target))) @ q.T)
    assert torch.all(tm.matrix() == 0.0)  # the true Y_t ~ e^-1000 underflows
    assert torch.allclose(tm.lyapunov().exponents, target, rtol=0, atol=1e-9)


def test_theorem_a6_bound_on_sgd_training():
    lr, steps = 0.5, 20
    flat, theta0, xs, ys = tiny_problem(steps, batch=3)
    tm = TangentMap(theta0.numel(), lr)
    max_lle, max_ft = [], []
    for theta, x, y in zip(trajectory(flat, theta0, xs, ys, lr, 0.0), xs, ys, strict=True):
        h = dense_hessian(flat.loss_fn(x, y), theta)
        jac_norm = torch.linalg.matrix_norm(torch.eye(h.shape[0], dtype=F64) - lr * h, ord=2)
        max_lle.append(max_local_exponent(h, lr))
        assert max_lle[-1] == pytest.approx(math.log(float(jac_norm)), abs=1e-12)
        tm.step(h)
        max_ft.append(tm.lyapunov().max_exponent)
    bound = mlce_upper_bound(max_lle)
    assert bound.shape == (steps,)
    assert torch.allclose(bound, torch.cumsum(torch.tensor(max_lle, dtype=F64), 0) / torch.arange(1, 21))
    assert bound[-1] > 0.0  # the sigmoid MLP has negative curvature: locally chaotic steps
    assert all(ft <= b + 1e-12 for ft, b in zip(max_ft, bound.tolist(), strict=True))
    assert max_ft[-1] < float(bound[-1]) - 1e-4  # the bound is not attained (non-commuting Hessians)


def test_max_local_exponent_counts_implicit_zeros():
    lam = torch.tensor([0.5, 1.0], dtype=F64)
    vecs = torch.eye(5, dtype=F64)[:, :2]
    assert max_local_exponent((lam, vecs), lr=0.1) == 0.0  # complement: J = I there
    assert max_local_exponent(torch.diag(torch.tensor([0.5, 1.0], dtype=F64)), 0.1) < 0.0


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_state_dict_round_trip_continues_identically(momentum):
    n = 5
    gen = torch.Generator().manual_seed(4)
    hs = [random_symmetric(n, gen) * 8.0 for _ in range(12)]
    original = TangentMap(n, 0.4, momentum)
    for h in hs[:6]:
        original.step(h)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = TangentMap(n, 0.1, momentum)
    restored.load_state_dict(torch.load(buffer))
    assert restored.t == 6 and restored.lr == 0.4
    for h in hs[6:]:
        original.step(h)
        restored.step(h)
    y0, s0 = original.scaled()
    y1, s1 = restored.scaled()
    assert torch.equal(y0, y1) and s0 == s1 and restored.t == original.t == 12
    assert s0 != 0.0 and original.reorthonormalisations > (3 if momentum == 0 else -1)  # QR steps exercised
    a, b = original.lyapunov(), restored.lyapunov()
    assert torch.equal(a.exponents, b.exponents) and torch.equal(a.vectors, b.vectors)
    assert torch.equal(a.error_estimate, b.error_estimate)
    with pytest.raises(ValueError):
        TangentMap(n + 1, 0.4, momentum).load_state_dict(original.state_dict())


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_legacy_checkpoint_loads(momentum):
    """A checkpoint of the old format (y, g scaled by 2^-k, log2_scale) continues the same tangent map."""
    n, lr = 5, 0.4
    gen = torch.Generator().manual_seed(4)
    hs = [random_symmetric(n, gen) * 8.0 for _ in range(8)]
    tm = TangentMap(n, lr, momentum)
    for h in hs[:4]:
        tm.step(h)
    y = tm.matrix()
    k = int(torch.frexp(y.abs().max())[1])
    y_scaled, g = _ldexp(y, -k), None
    if momentum:  # the old state held G = d buf / d theta_0 scaled like Y; the new one holds lr G
        g = _ldexp(tm._g if tm._rho is None else tm._g @ (torch.exp(tm._rho)[:, None] * tm._tt), -k) / lr
    legacy_state = {"num_params": n, "lr": lr, "momentum": momentum, "t": 4, "log2_scale": k, "y": y_scaled,
                    "g": g}
    legacy = TangentMap(n, 0.1, momentum)
    legacy.load_state_dict(legacy_state)
    assert legacy.update_rank == n
    for h in hs[4:]:
        tm.step(h)
        legacy.step(h)
    # the same exponents within both error estimates: 1e-12 held on one host, but with momentum the Gram path's
    # estimate is ~1e-10 and on an AMD EPYC with AVX-512 (MKL's code path there) the two differed by 1.2e-11
    a, b = legacy.lyapunov(), tm.lyapunov()
    diff = (a.exponents - b.exponents).abs()
    assert torch.all(diff <= a.error_estimate + b.error_estimate) and float(diff.max()) < 1e-9


def test_finite_time_exponents_of_plain_matrix():
    y = torch.diag(torch.tensor([math.e ** 6, math.e ** -3, 1.0], dtype=F64))
    ft = finite_time_exponents(y, t=3)
    assert isinstance(ft, FiniteTimeLyapunov)
    assert torch.allclose(ft.exponents, torch.tensor([2.0, 0.0, -1.0], dtype=F64), atol=1e-14)
    assert torch.allclose(ft.vectors.abs(), torch.eye(3, dtype=F64)[:, [0, 2, 1]])
    assert ft.max_exponent == pytest.approx(2.0) and ft.min_exponent == pytest.approx(-1.0)
    shifted = finite_time_exponents(y * math.exp(-30.0), t=3, log_scale=30.0)
    assert torch.allclose(shifted.exponents, ft.exponents, atol=1e-13)
    with pytest.raises(ValueError):
        finite_time_exponents(y, t=0)
    with pytest.raises(ValueError):
        finite_time_exponents(torch.full((2, 2), math.inf, dtype=F64), t=1)


# ----------------------------------------------------------------------------------------------------------
# Tier 5: the structured path (low-rank Y_t - I) equals the full SVD
# ----------------------------------------------------------------------------------------------------------

def lowrank_steps(tm: TangentMap, steps: int, rank: int, seed: int, scale: float = 30.0) -> None:
    """``steps`` random low-rank steps: orthonormal V (N, rank), eigenvalues ~ scale * N(0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        vecs, _ = torch.linalg.qr(torch.randn(tm.num_params, rank, generator=gen, dtype=F64))
        tm.step((scale * torch.randn(rank, generator=gen, dtype=F64), vecs))


def assert_same_spectrum(full: FiniteTimeLyapunov, fast: FiniteTimeLyapunov, y: torch.Tensor | None = None
                         ) -> None:
    n = full.vectors.shape[0]
    assert full.method == "full" and fast.method == "structured"
    assert fast.exponents.shape == (n,) and fast.vectors.shape == (n, n) and fast.t == full.t
    assert torch.equal(full.resolved, fast.resolved)
    assert torch.allclose(fast.exponents[fast.resolved], full.exponents[full.resolved], rtol=0, atol=1e-10)
    assert torch.all(fast.exponents[:-1] >= fast.exponents[1:])  # descending
    assert fast.resolution == pytest.approx(full.resolution, rel=0, abs=1e-12)
    assert fast.chaotic_dim == full.chaotic_dim and fast.non_chaotic_dim == full.non_chaotic_dim
    assert fast.chaotic_dim_certain == full.chaotic_dim_certain
    p_full, p_fast = (b @ b.T for b in (full.chaotic_subspace(), fast.chaotic_subspace()))
    assert torch.linalg.matrix_norm(p_full - p_fast) < 1e-8  # Frobenius >= spectral norm
    assert torch.allclose(fast.vectors.T @ fast.vectors, torch.eye(n, dtype=F64), rtol=0, atol=1e-12)
    if y is not None:  # the vectors diagonalise L_t = Y^T Y with eigenvalues sigma_i^2 (ties included)
        yv = y @ fast.vectors
        sigma2 = torch.exp(2.0 * full.t * fast.exponents)
        assert torch.allclose(yv.T @ yv, torch.diag(sigma2), rtol=0, atol=1e-10)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_structured_equals_full_on_tiny_model(momentum):
    lr, steps = 0.5, 2
    flat, theta0, xs, ys = tiny_problem(steps, batch=1)
    n = theta0.numel()
    tm = TangentMap(n, lr, momentum)
    bound = 0
    for theta, x, y in zip(trajectory(flat, theta0, xs, ys, lr, momentum), xs, ys, strict=True):
        spec = hessian_spectrum(flat.loss_fn(x, y), theta, method="lowrank", max_rank_fraction=0.9)
        tm.step(spec)
        bound += int((spec.eigenvalues != 0).sum())
    assert tm.update_rank == bound < n
    assert (tm.matrix() - torch.eye(n, dtype=F64)).abs().max() > 1e-3  # non-trivial
    assert tm.lyapunov(1e-12).method == "gram"  # too small an N for the structured path to pay off
    full, fast = tm.lyapunov(1e-12, method="full"), tm.lyapunov(1e-12, method="structured")
    assert int((fast.exponents == 0.0).sum()) >= n - 2 * bound  # the complement: exponent exactly 0
    assert_same_spectrum(full, fast, tm.matrix())


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_structured_equals_full_synthetic(momentum):
    n = 300
    tm = TangentMap(n, 0.05, momentum)
    lowrank_steps(tm, 3, 12, seed=5)
    assert tm.update_rank == 36
    full, fast = tm.lyapunov(1e-12, method="full"), tm.lyapunov(1e-12)
    assert fast.method == "structured"
    assert fast.chaotic_dim > 5 and fast.non_chaotic_dim > n - 36 and fast.num_unresolved == 0
    assert_same_spectrum(full, fast, tm.matrix())
    again = finite_time_lyapunov(tm, 1e-12, method="structured")
    assert torch.equal(again.exponents, fast.exponents) and torch.equal(again.vectors, fast.vectors)


def test_structured_unresolved_directions():
    """An eigenvalue 1/lr kills a direction (-inf in both paths); a growth beyond 1/(N eps) makes the exact
    eigenvalue-1 complement unresolved too, exactly as in the full path."""
    n, lr = 200, 0.5
    gen = torch.Generator().manual_seed(6)
    vecs, _ = torch.linalg.qr(torch.randn(n, 4, generator=gen, dtype=F64))
    tm = TangentMap(n, lr)
    tm.step((torch.tensor([1.0 / lr, -3.0, 0.7, 5.0], dtype=F64), vecs))
    tm.step((torch.tensor([0.3, -1.0], dtype=F64), vecs[:, 1:3]))
    full, fast = tm.lyapunov(1e-12, method="full"), tm.lyapunov(1e-12)
    assert fast.num_unresolved == 1 and fast.exponents[-1] == -math.inf
    assert_same_spectrum(full, fast)

    growing = TangentMap(n, 1.0)
    for _ in range(6):
        growing.step((torch.tensor([-1e3], dtype=F64), vecs[:, :1]))  # factor 1001 per step
    full, fast = growing.lyapunov(1e-12, method="full"), growing.lyapunov(1e-12)
    assert fast.method == "structured" and fast.num_unresolved == n - 1 and fast.resolution > 0.0
    assert fast.max_exponent == pytest.approx(math.log(1001.0), abs=1e-12)
    assert_same_spectrum(full, fast)


def test_structured_with_no_update_is_identity():
    n = 100
    tm = TangentMap(n, 0.1)
    tm.step((torch.zeros(3, dtype=F64), torch.eye(n, dtype=F64)[:, :3]))
    assert tm.update_rank == 0
    fast = tm.lyapunov(method="structured")
    assert torch.equal(fast.exponents, torch.zeros(n, dtype=F64)) and fast.chaotic_dim == 0
    assert torch.equal(fast.vectors, torch.eye(n, dtype=F64))


def test_auto_picks_structured_only_for_small_rank_bound():
    n = 200  # structured iff 2 (k + 10) < 100, i.e. k <= 39
    tm = TangentMap(n, 0.05)
    methods = []
    for _ in range(5):
        lowrank_steps(tm, 1, 8, seed=7 + tm.t)
        methods.append((tm.update_rank, tm.lyapunov(1e-12).method))
    assert methods == [(8, "structured"), (16, "structured"), (24, "structured"), (32, "structured"),
                       (40, "gram")]
    assert_same_spectrum(tm.lyapunov(1e-12, method="full"), tm.lyapunov(1e-12, method="structured"), tm.matrix())

    dense = TangentMap(n, 0.05)
    lowrank_steps(dense, 1, 3, seed=8)
    assert dense.lyapunov().method == "structured"
    dense.step(random_symmetric(n, torch.Generator().manual_seed(9)))
    lowrank_steps(dense, 1, 3, seed=10)
    assert dense.update_rank == n and dense.lyapunov().method in ("gram", "graded")
    with pytest.raises(ValueError):
        dense.lyapunov(method="bogus")


def test_structured_needs_a_representable_scale():
    tm = TangentMap(50, 1.0)
    v = torch.eye(50, dtype=F64)[:, :1]
    for _ in range(95):
        tm.step((torch.tensor([-1e3], dtype=F64), v))
    assert tm.update_rank == 50 and tm.scaled()[1] / math.log(2.0) > STRUCTURED_MAX_LOG2_SCALE
    tm._update_rank = 1  # rank 1 indeed, but the true Y_t is not representable: auto falls back
    assert tm.lyapunov().method == "graded"
    assert tm.lyapunov().max_exponent == pytest.approx(math.log(1001.0), abs=1e-12)
    assert tm.lyapunov(method="full").max_exponent == pytest.approx(math.log(1001.0), abs=1e-12)
    with pytest.raises(ValueError):
        tm.lyapunov(method="structured")
    with pytest.raises(ValueError):
        TangentMap(50, 1.0).lyapunov(method="structured")  # t = 0


def test_state_dict_keeps_update_rank():
    n = 300
    tm = TangentMap(n, 0.05, 0.9)
    lowrank_steps(tm, 2, 12, seed=11)
    state = tm.state_dict()
    assert state["update_rank"] == 24
    restored = TangentMap(n, 0.05, 0.9)
    restored.load_state_dict(state)
    assert restored.update_rank == 24 and restored.lyapunov(1e-12).method == "structured"
    assert torch.equal(restored.lyapunov(1e-12).exponents, tm.lyapunov(1e-12).exponents)
    lowrank_steps(restored, 1, 5, seed=12)
    assert restored.update_rank == 29
    old = {key: value for key, value in state.items() if key != "update_rank"}  # a checkpoint from before
    legacy = TangentMap(n, 0.05, 0.9)
    legacy.load_state_dict(old)
    assert legacy.update_rank == n and legacy.lyapunov(1e-12).method == "gram"


# ----------------------------------------------------------------------------------------------------------
# Tier 6: the graded representation against high precision (mpmath) where float64 SVDs lose the spectrum
# ----------------------------------------------------------------------------------------------------------

def spread_problem(t: int, seed: int = 0, n: int = 6) -> list[torch.Tensor]:
    """Non-commuting steps J_s = I - H_s whose exponents spread ~3 nats per step (e^{-870} .. e^{180} at
    t = 300): no single float64 matrix can hold Y_t's spectrum."""
    gen = torch.Generator().manual_seed(seed)
    d = 1.0 - torch.tensor([1.8, 1.3, 1.0, 0.7, 0.3, 0.1], dtype=F64)[:n]
    hs = []
    for _ in range(t):
        a = torch.randn(n, n, generator=gen, dtype=F64) * 0.15
        hs.append(torch.diag(d) + 0.5 * (a + a.T))
    return hs


def mpmath_spectrum(hs: list[torch.Tensor], lr: float, dps: int) -> tuple[list[float], list[list[float]]]:
    """Exponents (descending) and right singular vectors (rows) of prod (I - lr H_s) in high precision."""
    n = hs[0].shape[0]
    with mpmath.workdps(dps):
        y = mpmath.eye(n)
        for h in hs:
            y = (mpmath.eye(n) - lr * mpmath.matrix(h.tolist())) * y
        _, s, vt = mpmath.svd_r(y)
        order = sorted(range(n), key=lambda i: -s[i])
        exps = [float(mpmath.log(s[i])) / len(hs) for i in order]
        vecs = [[float(vt[i, j]) for j in range(n)] for i in order]
    return exps, vecs


def test_graded_path_resolves_whole_spectrum_against_mpmath():
    hs = spread_problem(300)
    ref, ref_vecs = mpmath_spectrum(hs, 1.0, dps=450)
    assert ref[0] * 300 - ref[-1] * 300 > 900  # far beyond float64's range: e^{~1000}
    tm = TangentMap(6, 1.0)
    for h in hs:
        tm.step(h)
    old = tm.lyapunov(method="full")  # one SVD of the scaled Y_t: everything below the top is lost
    assert old.num_unresolved == 5 and old.min_exponent == pytest.approx(ref[0], abs=1e-12)
    ft = tm.lyapunov()
    assert ft.method == "graded" and ft.num_unresolved == 0 and tm.reorthonormalisations > 10
    exact = torch.tensor(ref, dtype=F64)
    err = ft.error_estimate
    assert torch.all(err < 1e-11)
    assert torch.all((ft.exponents - exact).abs() <= err)  # every exponent within its own error estimate
    assert ft.chaotic_dim == int((exact > 0).sum()) == 2 and ft.chaotic_dim_certain
    assert ft.min_exponent == pytest.approx(ref[-1], abs=1e-12)
    overlaps = (ft.vectors.T @ torch.tensor(ref_vecs, dtype=F64).T).diagonal().abs()
    assert torch.all(overlaps > 1 - 1e-10)  # every right singular vector (the minimal one included)
    assert ft.exponent_sum == pytest.approx(log_det_sum(hs, 1.0), abs=1e-10)


def test_graded_svd_of_synthetic_graded_matrix_against_mpmath():
    """T = diag(e^rho) T~ with rho over 2,000 nats, many windows, near-equal scales mixed."""
    n = 12
    gen = torch.Generator().manual_seed(5)
    rho = torch.tensor([0.0, -3.0, -5.0, -5.5, -40.0, -41.0, -300.0, -301.5, -302.0, -900.0, -1500.0, -2000.0],
                       dtype=F64)[torch.randperm(n, generator=gen)]
    tt = torch.randn(n, n, generator=gen, dtype=F64)
    tt /= torch.linalg.vector_norm(tt, dim=1, keepdim=True)
    log_sigma, vecs, err, log_lost = graded_svd(rho, tt)
    with mpmath.workdps(1200):
        t_mp = mpmath.matrix(n, n)
        for i in range(n):
            for j in range(n):
                t_mp[i, j] = mpmath.exp(mpmath.mpf(float(rho[i]))) * mpmath.mpf(float(tt[i, j]))
        s = mpmath.svd_r(t_mp, compute_uv=False)
        ref = torch.tensor(sorted((float(mpmath.log(x)) for x in s), reverse=True), dtype=F64)
    assert log_lost == -math.inf and torch.all(torch.isfinite(log_sigma))
    assert torch.all((log_sigma - ref).abs() <= err) and torch.all(err < 1e-9)
    assert torch.allclose(vecs.T @ vecs, torch.eye(n, dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_gram_path_equals_full_svd(momentum):
    """Full-rank low-rank-pair steps (N = 300): the fast path's exponents, chaotic dimension, chaotic subspace
    and extreme directions agree with the full SVD within the error estimates."""
    n = 300
    tm = TangentMap(n, 0.05, momentum)
    gen = torch.Generator().manual_seed(21)
    for _ in range(40):  # mostly positive curvature: a few chaotic directions
        vecs, _ = torch.linalg.qr(torch.randn(n, 12, generator=gen, dtype=F64))
        tm.step((8.0 * torch.rand(12, generator=gen, dtype=F64) - 1.0, vecs))
    assert tm.update_rank == n
    full, fast = tm.lyapunov(method="full"), tm.lyapunov()
    assert fast.method == "gram" and fast.num_unresolved == 0 and full.num_unresolved == 0
    assert torch.all((fast.exponents - full.exponents).abs() <= fast.error_estimate + full.error_estimate)
    assert fast.chaotic_dim == full.chaotic_dim > 0 and fast.chaotic_dim_certain == full.chaotic_dim_certain
    p_full, p_fast = (b @ b.T for b in (full.chaotic_subspace(), fast.chaotic_subspace()))
    assert torch.linalg.matrix_norm(p_full - p_fast) < 1e-8
    assert torch.allclose(fast.vectors.T @ fast.vectors, torch.eye(n, dtype=F64), rtol=0, atol=1e-12)
    mask = fast.eigenvector_mask  # eigenvectors: the chaotic ones (momentum: 92 of them) and the minimal one
    assert bool(mask[0]) and bool(mask[-1]) and int(mask[:-1].sum()) == fast.chaotic_dim
    assert fast.chaotic_dim > 16 if momentum else fast.chaotic_dim >= 1
    for i in (0, n - 1):  # the extreme directions: the full path's (up to sign)
        assert abs(float(fast.vectors[:, i] @ full.vectors[:, i])) > 1 - 1e-8
    y = tm.matrix()
    yv = y @ fast.vectors[:, mask]
    sigma2 = torch.exp(2.0 * tm.t * fast.exponents[mask])
    assert torch.allclose(yv.T @ yv, torch.diag(sigma2), rtol=1e-9, atol=1e-12)


def test_decision_exponents_make_perturbation_directions_consistent():
    """Uncertain exponents never enter the chaotic strategy; max_non_chaotic is the smallest RESOLVED one."""
    lr = 0.5
    h = torch.tensor([-0.6, 0.0, 0.3, 1.0, 2.0], dtype=F64)  # 0.0: exponent 0 +- err; 2.0 = 1/lr: killed
    q = random_orthogonal(5, seed=1)
    tm = TangentMap(5, lr)
    for _ in range(10):
        tm.step((q * h) @ q.T)
    ft = tm.lyapunov(method="full")
    assert ft.num_unresolved == 1 and ft.num_uncertain >= 1 and ft.chaotic_dim == 1
    x = ft.decision_exponents
    assert torch.equal(x > ft.tol, ft.chaotic_mask)
    gen = torch.Generator().manual_seed(0)
    d = perturbation_direction("chaotic", exponents=x, eigenvectors=ft.vectors, generator=gen, tol=ft.tol)
    assert abs(float(d @ q[:, 0])) == pytest.approx(1.0, abs=1e-10)
    d = perturbation_direction("max_non_chaotic", exponents=x, eigenvectors=ft.vectors, tol=ft.tol)
    assert abs(float(d @ q[:, 3])) == pytest.approx(1.0, abs=1e-10)  # lambda = 1: log 0.5, not the killed one
    raw = perturbation_direction("max_non_chaotic", exponents=ft.exponents, eigenvectors=ft.vectors, tol=ft.tol)
    assert abs(float(raw @ q[:, 4])) == pytest.approx(1.0, abs=1e-6)  # what the raw exponents would pick


def test_gram_lower_matches_the_dense_product():
    """The block-row Gram matrix's lower triangle equals Y^T Y."""
    gen = torch.Generator().manual_seed(5)
    for n in (1, 7, 61):
        y = torch.randn(n + 3, n, generator=gen, dtype=F64)
        ref = y.T @ y
        lower = _gram_lower(y)
        assert torch.allclose(lower.tril(), ref.tril(), rtol=0, atol=1e-12 * float(ref.abs().max()))


def _map_with_chaotic_dim(n: int, k: int, steps: int = 15, lr: float = 0.05) -> TangentMap:
    """A plain-SGD tangent map whose L_t has exactly k eigenvalues > 1 (k expanding Hessian directions,
    -2 <= lam <= -0.5, the others contracting, 0.5 <= lam <= 2), the eigenbasis slowly rotating; short enough
    for no re-orthonormalisation (the gram path's regime)."""
    gen = torch.Generator().manual_seed(100 + k)
    q = random_orthogonal(n, seed=k)
    lam = torch.cat([-0.5 - 1.5 * torch.rand(k, generator=gen, dtype=F64),
                     0.5 + 1.5 * torch.rand(n - k, generator=gen, dtype=F64)])
    tm = TangentMap(n, lr)
    for _ in range(steps):
        tm.step((lam, q))
        small = 1e-3 * torch.randn(n, n, generator=gen, dtype=F64)
        q, _ = torch.linalg.qr(q + q @ (small - small.T))
    return tm


@pytest.mark.parametrize("k", [16, 17, 60])
def test_gram_path_keeps_every_chaotic_vector(k):
    """Chaotic dimension k (16, 17, 60 of N = 120): the same chaotic dimension, chaotic projector and extreme
    directions as the dense full SVD, with exactly the k chaotic and the minimal eigenvector computed. A missed
    chaotic eigenvector changes the projector by ~1 and fails this."""
    n = 120
    tm = _map_with_chaotic_dim(n, k)
    full, fast = tm.lyapunov(method="full"), tm.lyapunov(1e-12)
    assert fast.method == "gram" and full.chaotic_dim == k == fast.chaotic_dim
    assert int(fast.eigenvector_mask.sum()) == k + 1  # the chaotic ones and the minimal one
    assert torch.all((fast.exponents - full.exponents).abs() <= fast.error_estimate + full.error_estimate)
    p_full, p_fast = (b @ b.T for b in (full.chaotic_subspace(), fast.chaotic_subspace()))
    assert torch.linalg.matrix_norm(p_full - p_fast, ord=2) < 1e-8
    for i in (0, n - 1):
        assert abs(float(fast.vectors[:, i] @ full.vectors[:, i])) > 1 - 1e-8
    assert torch.allclose(fast.vectors.T @ fast.vectors, torch.eye(n, dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("n", "k"), [(3, 1), (40, 1), (40, 38), (200, 37)])
def test_tridiagonal_eigenpairs_equal_eigh(n, k):
    """_Tridiagonal (sytrd + sterf, MRRR + ormqr, reading the lower triangle only) against torch.linalg.eigh on
    a Gram matrix with a cluster of near-equal eigenvalues at 1 (like the untouched directions): residuals and
    orthogonality at the rounding level, the k top and the bottom eigenvalues' vectors (up to sign; the top k as
    a subspace when the k-th eigenvalue sits in the cluster)."""
    from chaosnb.lyapunov import _Tridiagonal

    gen = torch.Generator().manual_seed(n + k)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64))
    lam = torch.cat([torch.linspace(0.01, 0.5, n // 4, dtype=F64), 1.0 + 1e-9 * torch.rand(n // 2, generator=gen,
                     dtype=F64), torch.linspace(2.0, 30.0, n - n // 4 - n // 2, dtype=F64)])
    g = (q * lam) @ q.T
    g = (g + g.T) / 2
    tri = _Tridiagonal(g.tril() + torch.triu(torch.full_like(g, math.nan), 1))
    top, bottom = tri.extreme_eigenvectors(k)
    ref, vecs = torch.linalg.eigh(g)
    assert torch.allclose(tri.eigenvalues(), ref, rtol=0, atol=1e-13 * float(ref[-1]))
    assert top.shape == (n, k) and bottom.shape == (n, 1)
    got = torch.cat([top, bottom], dim=1)
    vals = torch.cat([ref.flip(0)[:k], ref[:1]])
    assert float((g @ got - got * vals).abs().max()) < 1e-12 * float(ref[-1])
    assert torch.allclose(got.T @ got, torch.eye(k + 1, dtype=F64), rtol=0, atol=1e-12)
    assert abs(float(bottom[:, 0] @ vecs[:, 0])) > 1 - 1e-10
    ref_top = vecs[:, n - k:]
    assert float(torch.linalg.matrix_norm(top @ top.T - ref_top @ ref_top.T, ord=2)) < 1e-6


def test_gram_path_falls_back_to_eigh_when_lapack_fails(monkeypatch):
    """A LAPACK failure in the MRRR path (info != 0) gives all N eigenvectors from eigh: same exponents, same
    chaotic projector."""
    import numpy as np

    import chaosnb.lyapunov as lyap

    tm = _map_with_chaotic_dim(60, 5)
    good = tm.lyapunov(1e-12)

    def failing(self, k):
        raise np.linalg.LinAlgError("dstemr failed (info 1)")

    monkeypatch.setattr(lyap._Tridiagonal, "extreme_eigenvectors", failing)
    fallback = tm.lyapunov(1e-12)
    assert fallback.eigenvector_mask is None and good.eigenvector_mask is not None
    assert torch.equal(fallback.exponents, good.exponents)
    p_good, p_fb = (b @ b.T for b in (good.chaotic_subspace(), fallback.chaotic_subspace()))
    assert torch.linalg.matrix_norm(p_good - p_fb, ord=2) < 1e-8


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_exponents_only_equal_the_full_svd_and_carry_no_vectors(momentum):
    """vectors=False (the engine's points without a snapshot): the gram path's exponents, error estimates,
    chaotic dimension and its certainty agree with the full SVD; the full path's singular values alone equal
    its SVD's; neither returns vectors, and asking for a subspace says what to call instead."""
    n = 300
    tm = TangentMap(n, 0.05, momentum)
    gen = torch.Generator().manual_seed(22)
    for _ in range(40):
        vecs, _ = torch.linalg.qr(torch.randn(n, 12, generator=gen, dtype=F64))
        tm.step((8.0 * torch.rand(12, generator=gen, dtype=F64) - 1.0, vecs))
    full = tm.lyapunov(method="full")
    values, with_vectors = tm.lyapunov(vectors=False), tm.lyapunov()
    assert values.method == with_vectors.method == "gram" and values.vectors is None
    assert torch.all((values.exponents - full.exponents).abs() <= values.error_estimate + full.error_estimate)
    assert torch.allclose(values.error_estimate, with_vectors.error_estimate, rtol=1e-6, atol=0)
    assert values.chaotic_dim == with_vectors.chaotic_dim == full.chaotic_dim > 0
    assert values.chaotic_dim_certain == full.chaotic_dim_certain
    assert values.max_exponent == pytest.approx(full.max_exponent, rel=1e-12)
    full_values = tm.lyapunov(method="full", vectors=False)
    assert full_values.vectors is None
    assert torch.allclose(full_values.exponents, full.exponents, rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match="vectors=True"):
        values.chaotic_subspace()


def test_training_computes_eigenvectors_only_where_they_are_read(monkeypatch):
    """A run records exponents at every tangent step but asks for eigenvectors only at snapshot steps, after
    the first snapshot (overlaps) and at the last step (perturbation directions)."""
    from chaosnb.config import RunConfig
    from chaosnb.train import Training

    asked = []
    original = TangentMap.lyapunov

    def spy(self, tol=0.0, method="auto", vectors=True):
        asked.append((self.t, vectors))
        return original(self, tol, method, vectors)

    monkeypatch.setattr(TangentMap, "lyapunov", spy)
    for snapshots, expected in [((), [(1, False), (2, False), (4, True)]),
                                ((2,), [(1, False), (2, True), (4, True)])]:
        asked.clear()
        config = RunConfig(model="mlp", steps=4, lr=1e-2, tangent_steps=(1, 2, 4), snapshot_steps=snapshots)
        tr = Training(config)
        while not tr.finished:
            tr.advance()
        assert asked == expected
        result = tr.result()
        assert len(result.series("chaotic_dim")[0]) == 3 and result.arrays["directions"].shape[0] > 0


def _wide_constant_hessian_map(steps: int):
    """(n, lr, h, q, tangent map after ``steps`` steps) for the constant Hessian q diag(h) q^T, N = 40, lr 0.1:
    exponents log|1 - lr h_i| spread over ~1 nat per step."""
    n, lr = 40, 0.1
    h = torch.linspace(-1.0, 6.0, n, dtype=F64)
    q = random_orthogonal(n, seed=7)
    tm = TangentMap(n, lr)
    for _ in range(steps):
        tm.step((h, q))
    return n, lr, h, q, tm


@pytest.mark.parametrize("vectors", [True, False])
def test_auto_takes_the_svd_between_the_gram_and_graded_paths(vectors):
    """Constant Hessian H = Q diag(h) Q^T (the exact case: exponents log|1 - lr h_i|, vectors Q), exponents spread
    over ~1 nat per step. At t = 24 (24 nats: beyond the Gram matrix's ~15 for N = 40, within the SVD's ~28) auto
    takes the full path, one SVD (singular values only with vectors=False), with every exponent within its error
    estimate of the exact one and the chaotic subspace spanned by q's expanding directions. At t = 40 (40 nats)
    the SVD would lose the bottom: auto goes on to the graded path."""
    n, lr, h, q, tm = _wide_constant_hessian_map(24)
    exact, order = torch.sort(torch.log((1.0 - lr * h).abs()), descending=True)
    ft = tm.lyapunov(1e-12, vectors=vectors)
    assert ft.method == "full" and ft.num_unresolved == 0 and tm.reorthonormalisations > 0
    assert torch.all((ft.exponents - exact).abs() <= ft.error_estimate)
    assert ft.chaotic_dim == int((exact > 0).sum()) > 0
    if vectors:  # the chaotic vectors (from L's tridiagonal reduction) and the minimal one (inverse iteration on R)
        overlaps = (ft.vectors.T @ q[:, order]).abs().diagonal()
        assert float(overlaps[:ft.chaotic_dim].min()) > 1 - 1e-8 and float(overlaps[-1]) > 1 - 1e-8
        assert int(ft.eigenvector_mask.sum()) == ft.chaotic_dim + 1 and bool(ft.eigenvector_mask[-1])
        assert torch.allclose(ft.vectors.T @ ft.vectors, torch.eye(n, dtype=F64), rtol=0, atol=1e-12)
        whole = tm.lyapunov(1e-12, method="full")  # one SVD: every vector
        p_whole, p_ft = (b @ b.T for b in (whole.chaotic_subspace(), ft.chaotic_subspace()))
        assert torch.linalg.matrix_norm(p_whole - p_ft, ord=2) < 1e-8
        assert torch.all((whole.exponents - ft.exponents).abs() <= ft.error_estimate)
    else:
        assert ft.vectors is None
    for _ in range(16):
        tm.step((h, q))
    graded = tm.lyapunov(1e-12, vectors=vectors)
    assert graded.method == "graded" and graded.num_unresolved == 0
    # every exponent within its own error estimate of the exact one (exact = mpmath at 80 digits within 8e-16). The
    # estimate before carried rows passed on their window's rounding was exceeded 10x here (9.3e-12 vs 9e-13).
    assert torch.all((graded.exponents - exact).abs() <= graded.error_estimate)
    assert graded.chaotic_dim == int((exact > 0).sum())


def test_auto_skips_the_svd_when_the_row_scales_prove_it_cannot_resolve(monkeypatch):
    """Where the row scales of the graded snapshot span more than one SVD resolves (sigma_max / sigma_min >= the
    ratio of the largest to the smallest row norm), ``auto`` goes straight to the graded path: the same numbers
    as ``method="graded"``, and no ``svdvals``. Where they do not, it still tries the SVD first (and the SVD
    there returns None only when the spectrum is really too wide)."""
    from chaosnb import lyapunov as ly

    n, _, _, _, tm = _wide_constant_hessian_map(40)
    limit = -math.log(ly.FULL_RESOLVE_MARGIN * n * ly.EPS64) + math.log(4.0)
    rho = tm.graded_snapshot()[0]
    assert float(rho.max() - rho.min()) > limit  # ~40 nats of row scales against ~30
    full_calls = []
    original = ly._resolved_full_exponents
    monkeypatch.setattr(ly, "_resolved_full_exponents", lambda *a: full_calls.append(a) or original(*a))
    auto = tm.lyapunov(1e-12)
    graded = tm.lyapunov(1e-12, method="graded")
    assert auto.method == "graded" and not full_calls
    assert torch.equal(auto.exponents, graded.exponents) and torch.equal(auto.error_estimate, graded.error_estimate)
    assert torch.equal(auto.vectors, graded.vectors)
    assert original(tm, 1e-12, False) is None  # what the skipped SVD would have said
    tm24 = _wide_constant_hessian_map(24)[-1]
    assert tm24.lyapunov(1e-12).method == "full" and len(full_calls) == 1  # narrower: the SVD is tried (and works)


@pytest.mark.parametrize("method", ["graded", "full"])
def test_svd_failure_falls_back_to_the_qr_iteration_driver(monkeypatch, method):
    """LAPACK's divide and conquer (gesdd) can fail to converge on a large graded window (seen at t = 300 on the
    MLP): the finite-time spectrum then comes from scipy's gesvd, with the same exponents and chaotic subspace."""
    n, lr = 30, 0.1
    h = torch.linspace(-1.0, 6.0, n, dtype=F64)
    q = random_orthogonal(n, seed=8)
    tm = TangentMap(n, lr)
    for _ in range(40 if method == "graded" else 10):
        tm.step((h, q))
    reference = tm.lyapunov(1e-12, method=method)

    def failing(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "svd", failing)
    monkeypatch.setattr(torch.linalg, "svdvals", failing)
    again = tm.lyapunov(1e-12, method=method)
    assert torch.all((again.exponents - reference.exponents).abs()
                     <= again.error_estimate + reference.error_estimate)
    assert again.chaotic_dim == reference.chaotic_dim > 0
    p0, p1 = (f.chaotic_subspace() @ f.chaotic_subspace().T for f in (reference, again))
    assert torch.linalg.matrix_norm(p0 - p1, ord=2) < 1e-8


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_factored_step_equals_the_dense_pair_step(momentum):
    """V = P C in the input subspace (curvature.subspace_spectrum's factor): the tangent map stepped through P's
    maps equals the one stepped with the formed N x r pair, across re-orthonormalisations; add_up_ is += P z."""
    from chaosnb import curvature
    from chaosnb.lyapunov import FactoredEigenpairs
    from tests.conftest import tiny_case

    flat, _, x, _ = tiny_case("mlp-relu", batch=3)
    sub = curvature.input_subspace(flat, x)
    n, d = flat.num_params, sub.dim
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(d, 7, generator=gen, dtype=F64)
    y = torch.randn(n, 7, generator=gen, dtype=F64)
    assert torch.allclose(sub.add_up_(y.clone(), z, -0.3), y - 0.3 * sub.up(z), rtol=0, atol=1e-14)
    factored, dense = TangentMap(n, 0.05, momentum), TangentMap(n, 0.05, momentum)
    c0, _ = torch.linalg.qr(torch.randn(d, 9, generator=gen, dtype=F64))
    lam0 = torch.linspace(-4.0, 8.0, 9, dtype=F64)  # two expanding directions, slowly rotating
    for _ in range(80):
        c, _ = torch.linalg.qr(c0 + 0.05 * torch.randn(d, 9, generator=gen, dtype=F64))
        lam = lam0 + 0.1 * torch.randn(9, generator=gen, dtype=F64)
        factored.step(FactoredEigenpairs(lam, c, sub))
        dense.step((lam, sub.up(c)))
    assert factored.reorthonormalisations == dense.reorthonormalisations > 0
    a, b = factored.matrix(), dense.matrix()
    assert float((a - b).abs().max()) <= 1e-12 * float(b.abs().max())
    fa, fb = factored.lyapunov(1e-12), dense.lyapunov(1e-12)
    assert torch.all((fa.exponents - fb.exponents).abs() <= fa.error_estimate + fb.error_estimate)
    assert fa.chaotic_dim == fb.chaotic_dim > 0 and factored.update_rank == dense.update_rank


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_factored_tangent_map_equals_jacobian_of_unrolled_training(momentum):
    """The engine's path for a ReLU MLP: the spectrum from P^T H P (curvature.minibatch_spectrum) and the tangent
    step through the input subspace (factored_hessian) give the Jacobian of the unrolled training steps."""
    from chaosnb.curvature import minibatch_spectrum
    from chaosnb.lyapunov import FactoredEigenpairs, factored_hessian

    lr, steps = 0.5, 5
    flat, theta0, xs, ys = tiny_problem(steps, batch=2, activation="relu")
    reference = jacrev(unrolled_training(flat, xs, ys, lr, momentum))(theta0)
    tm = TangentMap(theta0.numel(), lr, momentum)
    for theta, x, y in zip(trajectory(flat, theta0, xs, ys, lr, momentum), xs, ys, strict=True):
        h = factored_hessian(minibatch_spectrum(flat, theta, x, y))
        assert isinstance(h, FactoredEigenpairs) and h.subspace.dim < theta0.numel()  # s = 2 of 4 inputs
        tm.step(h)
    assert (reference - torch.eye(theta0.numel(), dtype=F64)).abs().max() > 0.05  # non-trivial dynamics
    assert torch.allclose(tm.matrix(), reference, rtol=0, atol=1e-8)


@pytest.mark.parametrize("n, leaf", [(7, 1024), (37, 8), (64, 16)])
def test_the_triangular_product_equals_the_general_one(n, leaf):
    """The blocked upper-triangular product of the re-orthonormalisation skips only zero blocks."""
    from chaosnb.lyapunov import _upper_triangular_matmul

    gen = torch.Generator().manual_seed(n)
    u = torch.triu(torch.randn(n, n, generator=gen, dtype=torch.float64))
    b = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    assert torch.allclose(_upper_triangular_matmul(u, b, leaf), u @ b, rtol=0, atol=1e-13)
    assert not torch.allclose(_upper_triangular_matmul(torch.ones(n, n, dtype=torch.float64), b, leaf),
                              torch.ones(n, n, dtype=torch.float64) @ b) or n <= leaf  # the lower part is ignored
