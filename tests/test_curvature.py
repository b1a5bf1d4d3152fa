"""Hessian spectra (dense and low-rank) against independent dense float64 references."""

import pytest
import torch
from torch.func import grad, jacrev

from chaosnb import curvature
from chaosnb.curvature import (
    dense_hessian,
    hessian_spectrum,
    hvp_fn,
    minibatch_spectrum,
    spectrum_from_matrix,
)
from tests.conftest import tiny_case


def reference_hessian(loss, theta):
    """Reverse-over-reverse Jacobian of the gradient: independent of the forward-over-reverse paths."""
    return jacrev(grad(loss))(theta)


def test_dense_hessian_equals_reference(tiny):
    flat, theta, x, y = tiny
    loss = flat.loss_fn(x, y)
    assert torch.allclose(dense_hessian(loss, theta), reference_hessian(loss, theta), atol=1e-12)


def test_hvp_equals_hessian_times_vectors(tiny):
    flat, theta, x, y = tiny
    loss = flat.loss_fn(x, y)
    v = torch.randn(theta.numel(), 5, dtype=theta.dtype, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(hvp_fn(loss, theta)(v), reference_hessian(loss, theta) @ v, atol=1e-12)


@pytest.mark.parametrize("method", ["dense", "lowrank"])
def test_spectrum_reconstructs_hessian(tiny, method):
    flat, theta, x, y = tiny
    loss = flat.loss_fn(x, y)
    spec = hessian_spectrum(loss, theta, method=method, max_rank_fraction=0.99)
    h = reference_hessian(loss, theta)
    assert torch.allclose(spec.to_dense(), h, atol=1e-10)
    v = torch.randn(theta.numel(), dtype=theta.dtype)
    assert torch.allclose(spec.matvec(v), h @ v, atol=1e-10)


def test_lowrank_spectrum_equals_eigh_and_zero_space_is_exact():
    flat, theta, x, y = tiny_case("mlp-relu", batch=2)
    loss = flat.loss_fn(x, y)
    h = reference_hessian(loss, theta)
    ref = torch.linalg.eigvalsh(h)
    spec = hessian_spectrum(loss, theta, method="lowrank")
    assert spec.method == "lowrank" and spec.implicit_zeros > 0  # rank-deficient: not a fallback
    full = torch.sort(torch.cat([spec.eigenvalues, torch.zeros(spec.implicit_zeros, dtype=ref.dtype)])).values
    assert torch.allclose(full, ref, atol=1e-10)
    # eigenvectors are orthonormal and satisfy H v = lambda v
    vecs = spec.eigenvectors
    assert torch.allclose(vecs.T @ vecs, torch.eye(vecs.shape[1], dtype=vecs.dtype), atol=1e-10)
    assert torch.allclose(h @ vecs, vecs * spec.eigenvalues, atol=1e-10)
    assert spec.rank == int((ref.abs() > spec.tol).sum())


def test_counts_with_tolerance_are_stable_across_dtypes():
    flat, theta, x, y = tiny_case("mlp-sigmoid", batch=3)
    spec64 = hessian_spectrum(flat.loss_fn(x, y), theta, method="dense")
    spec32 = hessian_spectrum(flat.loss_fn(x.float(), y), theta.float(), method="dense")
    assert spec32.eigenvalues.dtype == torch.float32
    assert (spec32.n_pos, spec32.n_neg, spec32.n_zero) == (spec64.n_pos, spec64.n_neg, spec64.n_zero)
    # a naive count without tolerance sees float noise as signed eigenvalues
    assert spec64.n_zero > 0


def test_lowrank_falls_back_to_dense_when_rank_is_not_small():
    flat, theta, x, y = tiny_case("mlp-sigmoid", batch=16)
    spec = hessian_spectrum(flat.loss_fn(x, y), theta, method="lowrank", max_rank_fraction=0.2)
    assert spec.method == "dense" and spec.info["fallback"]
    assert torch.allclose(spec.to_dense(), reference_hessian(flat.loss_fn(x, y), theta), atol=1e-10)


def test_spectrum_summary_counts_and_chaotic_set():
    lam = torch.tensor([-2.0, -1e-12, 0.0, 0.5, 3000.0], dtype=torch.float64)
    spec = spectrum_from_matrix(torch.diag(lam), atol=1e-9)
    assert (spec.n_neg, spec.n_zero, spec.n_pos) == (1, 2, 2)
    assert spec.n_above(2 / 1e-3) == 1
    mask = spec.chaotic_mask(lr=1e-3)  # lambda < 0 or lambda > 2/lr
    assert mask.tolist() == [True, False, False, False, True]
    lle = spec.local_lyapunov_exponents(lr=1e-3)
    expected = torch.log(torch.abs(1 - 1e-3 * torch.tensor([-2.0, 0, 0, 0.5, 3000.0], dtype=torch.float64)))
    assert torch.allclose(lle, expected)


def test_unknown_method_is_a_clear_error():
    flat, theta, x, y = tiny_case("mlp-relu")
    with pytest.raises(ValueError, match="dense, lowrank"):
        hessian_spectrum(flat.loss_fn(x, y), theta, method="lanczos")


def test_minibatch_spectrum_on_the_paper_mlp_matches_dense(data_root):
    from chaosnb.data import load_dataset, sampler_for
    from chaosnb.models import make_flat_model

    ds = load_dataset("usps", data_root)
    x, y = sampler_for(ds, 4, 0).batch(ds, 0)
    flat, theta = make_flat_model("mlp", seed=0, dtype=torch.float64)
    # the full 5,350 x 5,350 reference is checked in benchmarks/; here: H v against direct HVPs
    low = minibatch_spectrum(flat, theta, x, y, method="lowrank")
    assert low.method == "lowrank" and low.rank < 4 * (10 + 3 * 20)
    v = torch.randn(theta.numel(), 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    hv = hvp_fn(flat.loss_fn(x, y), theta)(v)
    assert torch.allclose(low.matvec(v), hv, atol=1e-10)


def test_eigh_falls_back_to_float64_when_float32_silently_returns_nan(monkeypatch):
    h = torch.diag(torch.tensor([-1.0, 0.0, 2.0]))
    original = torch.linalg.eigh

    def flaky(a, *args, **kwargs):
        lam, vecs = original(a, *args, **kwargs)
        if a.dtype == torch.float32:  # what float32 syevd did on one CNN Hessian
            return torch.full_like(lam, float("nan")), torch.full_like(vecs, float("nan"))
        return lam, vecs

    monkeypatch.setattr(torch.linalg, "eigh", flaky)
    spec = spectrum_from_matrix(h)
    assert spec.eigenvalues.dtype == torch.float32
    assert spec.eigenvalues.tolist() == [-1.0, 0.0, 2.0]


# ---------------------------------------------------------------------------------------------- fallback chain
def _failing(mode: str):
    def solve(a):
        if mode == "raise":
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge (forced)")
        n = a.shape[0]
        nan = torch.full((n,), float("nan"), dtype=a.dtype)
        return nan, torch.full((n, n), float("nan"), dtype=a.dtype)

    return solve


def _random_symmetric(n: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (a + a.T).to(dtype)


@pytest.mark.parametrize("mode", ["raise", "nan"])
@pytest.mark.parametrize("failing", range(1, len(curvature.EIGENSOLVERS)))
def test_each_solver_failure_falls_through_to_the_next(monkeypatch, mode, failing):
    """The first ``failing`` solvers of the chain raise (or silently return NaN): the next one answers, exactly."""
    h = _random_symmetric(12)
    reference = torch.linalg.eigvalsh(h.double())
    names = list(curvature.EIGENSOLVERS)
    for name in names[:failing]:
        monkeypatch.setitem(curvature.EIGENSOLVERS, name, _failing(mode))
    spec = spectrum_from_matrix(h)
    assert spec.info["solver"] == names[failing]
    assert spec.eigenvalues.dtype == torch.float32 and spec.eigenvectors.dtype == torch.float32
    assert torch.allclose(spec.eigenvalues.double(), reference, rtol=0, atol=1e-5)
    assert torch.allclose(spec.to_dense().double(), h.double(), atol=1e-4)


@pytest.mark.parametrize("mode", ["raise", "nan"])
def test_every_solver_failing_raises_hessian_diverged(monkeypatch, mode):
    for name in list(curvature.EIGENSOLVERS):
        monkeypatch.setitem(curvature.EIGENSOLVERS, name, _failing(mode))
    with pytest.raises(curvature.HessianDiverged, match="every eigensolver failed") as info:
        spectrum_from_matrix(_random_symmetric(5))
    assert all(name in str(info.value) for name in curvature.EIGENSOLVERS)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_hessian_is_divergence(value):
    h = _random_symmetric(4)
    h[1, 2] = h[2, 1] = value
    with pytest.raises(curvature.HessianDiverged, match="non-finite"):
        spectrum_from_matrix(h)


def test_astronomically_large_hessian_is_divergence():
    with pytest.raises(curvature.HessianDiverged, match="astronomically large"):
        spectrum_from_matrix(_random_symmetric(4, dtype=torch.float64) * 1e25)
    ok = spectrum_from_matrix(_random_symmetric(4, dtype=torch.float64) * 1e15)  # large, but below the limit
    assert torch.isfinite(ok.eigenvalues).all()


@pytest.mark.parametrize("scale", [2.0**-1000, 1e-30, 1.0, 3e10])
def test_power_of_two_rescaling_is_exact_at_any_scale(scale):
    h = _random_symmetric(8, dtype=torch.float64) * scale
    spec = spectrum_from_matrix(h, atol=0.0)
    reference = torch.linalg.eigvalsh(_random_symmetric(8, dtype=torch.float64)) * scale
    assert torch.allclose(spec.eigenvalues, reference, rtol=1e-12, atol=0.0)


def test_lowrank_small_eigh_uses_the_chain(monkeypatch):
    flat, theta, x, y = tiny_case("mlp-relu")
    reference = minibatch_spectrum(flat, theta, x, y, method="lowrank")
    for name in ("torch.eigh", "torch.eigh[float64]"):
        monkeypatch.setitem(curvature.EIGENSOLVERS, name, _failing("raise"))
    spec = minibatch_spectrum(flat, theta, x, y, method="lowrank")
    assert spec.info["solver"] == "scipy.evr"
    assert torch.allclose(spec.eigenvalues, reference.eigenvalues, rtol=0, atol=1e-12)
