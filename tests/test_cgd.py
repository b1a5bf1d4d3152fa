"""Tests for chaosnb.cgd: the chaos-pruned step of Theorem A.7 (eqs. (44), (50)-(55))."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, jacrev

from chaosnb.cgd import CGD, PRUNE_SETS, prune_plan, pruned_gradient
from chaosnb.curvature import dense_hessian, hessian_spectrum
from chaosnb.models import FlatModel, build_model

DT = torch.float64


def _model(seed: int = 0) -> torch.nn.Module:
    return build_model("mlp", in_features=6, hidden=4, classes=3, activation="tanh", dtype=DT, seed=seed)


def _batch(seed: int, b: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, 6, generator=gen, dtype=DT), torch.randint(0, 3, (b,), generator=gen)


@pytest.fixture(scope="module")
def setup() -> dict:
    flat = FlatModel(_model())
    theta = flat.initial_theta()
    x, y = _batch(0)
    loss = flat.loss_fn(x, y)
    h = dense_hessian(loss, theta)
    dense = hessian_spectrum(loss, theta, method="dense")
    low = hessian_spectrum(loss, theta, method="lowrank", max_rank_fraction=0.9, block=8)
    lam, vecs = torch.linalg.eigh(h)
    pos = lam[lam > dense.tol].sort(descending=True).values
    lr = 4.0 / float(pos[2] + pos[3])  # 2/lr halfway between the 3rd and 4th largest eigenvalues
    # preconditions that make every test below non-vacuous
    assert low.implicit_zeros > 0 and low.n_pos == dense.n_pos and low.n_neg == dense.n_neg
    assert dense.n_neg > 0 and int((lam > 2 / lr).sum()) == 3
    assert not bool(((lam.abs() > 1e-12) & (lam.abs() <= 10 * dense.tol)).any())  # clear gap around tol
    return dict(flat=flat, theta=theta, loss=loss, h=h, dense=dense, low=low, lam=lam, vecs=vecs, lr=lr,
                tol=dense.tol)


def _keep_ref(lam: torch.Tensor, tol: float, lr: float, prune_set: str) -> torch.Tensor:
    return {"chaotic": (lam >= -tol) & (lam <= 2 / lr), "neg": lam > tol, "pos": lam < -tol}[prune_set]


def _random_vector(seed: int, n: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=DT)


@pytest.mark.parametrize("method", ["dense", "lowrank"])
@pytest.mark.parametrize("prune_set", PRUNE_SETS)
def test_theorem_a7_jacobian(setup: dict, prune_set: str, method: str) -> None:
    s = setup
    spec = s["dense"] if method == "dense" else s["low"]
    plan = prune_plan(spec, s["lr"], prune_set)
    grad_fn = grad(s["loss"])

    def step(th: torch.Tensor) -> torch.Tensor:  # the projector is held fixed at theta0
        return th - s["lr"] * pruned_gradient(grad_fn(th), plan)

    jac = jacrev(step)(s["theta"])
    lam, vecs = s["lam"], s["vecs"]
    keep = _keep_ref(lam, s["tol"], s["lr"], prune_set)
    assert 0 < int(keep.sum()) < lam.numel()
    p_keep = vecs[:, keep] @ vecs[:, keep].T
    eye = torch.eye(lam.numel(), dtype=DT)
    torch.testing.assert_close(jac, eye - s["lr"] * p_keep @ s["h"], atol=1e-10, rtol=0)
    # eq. (55): eigenvalue 1 on pruned eigenvectors, 1 - lr*lambda on kept ones
    factor = torch.where(keep, 1.0 - s["lr"] * lam, torch.ones_like(lam))
    torch.testing.assert_close(jac @ vecs, vecs * factor, atol=1e-10, rtol=0)
    # the effective Hessian P_keep H and the tangent-map Jacobian from the plan
    lam_k, v_k = plan.effective_hessian()
    torch.testing.assert_close((v_k * lam_k) @ v_k.T, p_keep @ s["h"], atol=1e-10, rtol=0)
    torch.testing.assert_close(plan.jacobian_matvec(eye), jac, atol=1e-10, rtol=0)


def test_chaotic_pruning_has_no_positive_local_exponent(setup: dict) -> None:
    s = setup
    n = s["theta"].numel()
    sgd_jac = torch.eye(n, dtype=DT) - s["lr"] * s["h"]
    assert float(torch.log(torch.linalg.eigvals(sgd_jac).abs()).max()) > 0.1  # plain SGD is chaotic here
    grad_fn = grad(s["loss"])
    for spec in (s["dense"], s["low"]):
        plan = prune_plan(spec, s["lr"], "chaotic")
        jac = jacrev(lambda th, plan=plan: th - s["lr"] * pruned_gradient(grad_fn(th), plan))(s["theta"])
        lle = torch.log(torch.linalg.eigvals(jac).abs())
        assert float(lle.max()) <= 1e-12


@pytest.mark.parametrize("prune_set", PRUNE_SETS)
def test_prune_sets_keep_the_right_signs(setup: dict, prune_set: str) -> None:
    s = setup
    lam, vecs, tol, lr = s["lam"], s["vecs"], s["tol"], s["lr"]
    keep = _keep_ref(lam, tol, lr, prune_set)
    plan_d = prune_plan(s["dense"], lr, prune_set)
    plan_l = prune_plan(s["low"], lr, prune_set)
    assert torch.equal(plan_d.kept, _keep_ref(s["dense"].eigenvalues, tol, lr, prune_set))
    assert plan_d.n_kept == plan_l.n_kept == int(keep.sum())
    g = _random_vector(1, lam.numel())  # a generic vector: components on every eigenspace
    gt_d = pruned_gradient(g, plan_d)
    c, c0 = vecs.T @ gt_d, vecs.T @ g
    torch.testing.assert_close(c[keep], c0[keep], atol=1e-12, rtol=0)
    torch.testing.assert_close(c[~keep], torch.zeros_like(c[~keep]), atol=1e-12, rtol=0)
    # dense and low-rank agree, including the implicit zero eigenspace
    gt_l = pruned_gradient(g, plan_l)
    torch.testing.assert_close(gt_l, gt_d, atol=1e-10, rtol=0)
    null = vecs[:, lam.abs() <= tol]
    assert float((null.T @ g).norm()) > 0.5
    if prune_set == "chaotic":
        torch.testing.assert_close(null.T @ gt_l, null.T @ g, atol=1e-10, rtol=0)
    else:
        torch.testing.assert_close(null.T @ gt_l, torch.zeros(null.shape[1], dtype=DT), atol=1e-10, rtol=0)
    # the real mini-batch gradient
    g_true = grad(s["loss"])(s["theta"])
    torch.testing.assert_close(pruned_gradient(g_true, plan_l), pruned_gradient(g_true, plan_d),
                               atol=1e-10, rtol=0)


def test_top_abs_prunes_the_k_largest_magnitudes(setup: dict) -> None:
    s = setup
    lam, vecs, lr, tol = s["lam"], s["vecs"], s["lr"], s["tol"]
    in_set = ~_keep_ref(lam, tol, lr, "chaotic")
    g = _random_vector(2, lam.numel())
    for k in (1, 2, 5):
        expected = lam[in_set].abs().sort(descending=True).values[:k]
        for spec in (s["dense"], s["low"]):
            plan = prune_plan(spec, lr, "chaotic", k=k)
            assert plan.n_pruned == k
            torch.testing.assert_close(plan.pruned_eigenvalues.abs().sort(descending=True).values, expected)
        idx = torch.nonzero(in_set).flatten()[lam[in_set].abs().argsort(descending=True)[:k]]
        ref = g - vecs[:, idx] @ (vecs[:, idx].T @ g)
        torch.testing.assert_close(pruned_gradient(g, plan), ref, atol=1e-10, rtol=0)
    # k beyond the set prunes the whole set (explicit vectors only)
    full = pruned_gradient(g, prune_plan(s["dense"], lr, "chaotic"))
    torch.testing.assert_close(pruned_gradient(g, prune_plan(s["dense"], lr, "chaotic", k=100)), full)
    plan = prune_plan(s["low"], lr, "neg", k=100)
    assert not plan.prune_implicit and plan.n_pruned == s["low"].n_neg
    neg = vecs[:, lam < -tol]
    torch.testing.assert_close(pruned_gradient(g, plan), g - neg @ (neg.T @ g), atol=1e-10, rtol=0)


def test_rand_selection_is_seeded(setup: dict) -> None:
    s = setup
    in_set = prune_plan(s["dense"], s["lr"], "chaotic").pruned

    def mask(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return prune_plan(s["dense"], s["lr"], "chaotic", k=3, select="rand", generator=gen).pruned

    assert torch.equal(mask(1), mask(1))
    assert not torch.equal(mask(1), mask(2))
    union = torch.zeros_like(in_set)
    for seed in range(60):
        m = mask(seed)
        assert int(m.sum()) == 3 and not bool((m & ~in_set).any())
        union |= m
    assert torch.equal(union, in_set)


@pytest.mark.parametrize("prune_set,method", [("chaotic", "dense"), ("neg", "lowrank")])
def test_noise_replaces_the_pruned_component(setup: dict, prune_set: str, method: str) -> None:
    s = setup
    spec = s["dense"] if method == "dense" else s["low"]
    plan = prune_plan(spec, s["lr"], prune_set)
    keep = _keep_ref(s["lam"], s["tol"], s["lr"], prune_set)
    v_keep = s["vecs"][:, keep]
    g = _random_vector(3, s["lam"].numel())
    sigma, draws = 0.5, 3000
    gen = torch.Generator().manual_seed(0)
    out = torch.stack([pruned_gradient(g, plan, noise_std=sigma, generator=gen) for _ in range(draws)])
    kept = out @ v_keep
    torch.testing.assert_close(kept, (v_keep.T @ g).expand_as(kept), atol=1e-10, rtol=0)
    pruned = out - kept @ v_keep.T  # P_prune g~, should be P_prune z
    assert plan.n_pruned == s["lam"].numel() - int(keep.sum())
    var = float((pruned**2).sum(dim=1).mean()) / (plan.n_pruned * sigma**2)
    assert abs(var - 1.0) < 0.05
    assert float(pruned.mean(dim=0).abs().max()) < 5 * sigma / draws**0.5
    gen1, gen2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(pruned_gradient(g, plan, 0.3, gen1), pruned_gradient(g, plan, 0.3, gen2))


def _train(module: torch.nn.Module, opt: torch.optim.Optimizer, seeds: range, spectra: bool) -> None:
    flat = FlatModel(module)
    for seed in seeds:
        x, y = _batch(100 + seed, b=3)
        opt.zero_grad()
        F.cross_entropy(module(x), y).backward()
        if spectra:
            spec = hessian_spectrum(flat.loss_fn(x, y), flat.initial_theta(), method="dense")
            opt.step(spec)
        else:
            opt.step()


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_cgd_before_prune_start_equals_sgd(momentum: float) -> None:
    m1, m2 = _model(), _model()
    cgd = CGD(m1.parameters(), lr=0.1, momentum=momentum, prune_start=50)
    sgd = torch.optim.SGD(m2.parameters(), lr=0.1, momentum=momentum)
    for seed in range(6):
        _train(m1, cgd, range(seed, seed + 1), spectra=False)
        _train(m2, sgd, range(seed, seed + 1), spectra=False)
        for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
            assert torch.equal(p1, p2)
    assert cgd.step_count == 6 and cgd.last_plan is None


def test_cgd_step_applies_the_pruned_gradient_with_momentum() -> None:
    module = _model()
    flat = FlatModel(module)
    lr, beta = 0.5, 0.9
    opt = CGD(module.parameters(), lr=lr, momentum=beta, prune_set="neg")
    theta, buf = flat.initial_theta(), None
    for seed in range(2):
        x, y = _batch(200 + seed, b=3)
        g = grad(flat.loss_fn(x, y))(theta)
        plan = prune_plan(hessian_spectrum(flat.loss_fn(x, y), theta, method="dense"), lr, "neg")
        gt = pruned_gradient(g, plan)
        assert float((gt - g).norm()) > 1e-3  # pruning changes the step
        buf = gt if buf is None else beta * buf + gt
        theta = theta - lr * buf
        _train(module, opt, range(200 + seed - 100, 200 + seed - 99), spectra=True)
        torch.testing.assert_close(flat.initial_theta(), theta, atol=1e-13, rtol=0)
        lam_k, _ = opt.last_plan.effective_hessian()
        assert bool((lam_k > plan.tol).all())
    opt.zero_grad()
    F.cross_entropy(module(_batch(0)[0]), _batch(0)[1]).backward()
    with pytest.raises(ValueError, match="spectrum"):
        opt.step()


def test_state_dict_round_trip_resumes_exactly() -> None:
    kwargs = dict(lr=0.05, momentum=0.9, prune_set="chaotic", k=3, select="rand", prune_start=1,
                  noise_std=0.1)
    module = _model()
    opt = CGD(module.parameters(), seed=7, **kwargs)
    _train(module, opt, range(3), spectra=True)
    snapshot = copy.deepcopy(opt.state_dict())
    params = [p.detach().clone() for p in module.parameters()]
    _train(module, opt, range(3, 6), spectra=True)
    final_a = FlatModel(module).initial_theta()

    def resumed(load: bool) -> torch.Tensor:
        m = _model(seed=1)
        with torch.no_grad():
            for p, q in zip(m.parameters(), params, strict=True):
                p.copy_(q)
        o = CGD(m.parameters(), seed=123, **kwargs)
        if load:
            o.load_state_dict(snapshot)
            assert o.step_count == 3
        _train(m, o, range(3, 6), spectra=True)
        return FlatModel(m).initial_theta()

    assert torch.equal(resumed(True), final_a)
    assert not torch.equal(resumed(False), final_a)


@pytest.mark.parametrize("kwargs,words", [
    (dict(prune_set="zero"), ("chaotic", "neg", "pos")),
    (dict(select="random"), ("top_abs", "rand")),
])
def test_invalid_options_list_the_valid_ones(setup: dict, kwargs: dict, words: tuple[str, ...]) -> None:
    assert PRUNE_SETS == ("chaotic", "neg", "pos")
    full = dict(prune_set="chaotic", select="top_abs") | kwargs
    with pytest.raises(ValueError) as err:
        prune_plan(setup["dense"], 0.1, full["prune_set"], k=2, select=full["select"])
    assert all(w in str(err.value) for w in words)
    with pytest.raises(ValueError) as err:
        CGD(_model().parameters(), lr=0.1, **kwargs)
    assert all(w in str(err.value) for w in words)
    with pytest.raises(ValueError):
        CGD(_model().parameters(), lr=0.1, k=-1)
