"""The closed-form Hessian of piecewise-linear networks (chaosnb.multilinear) against torch.func's full Hessian in
float64: the paper's CNN and MLP on real USPS batches, and a zoo of layouts (strides, no bias, trailing ReLU,
several Linear layers), plus the routing of minibatch_spectrum."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from chaosnb.curvature import dense_hessian, minibatch_spectrum, spectrum_from_matrix
from chaosnb.models import FlatModel, build_model
from chaosnb.multilinear import affine_indices, closed_form_hessian
from chaosnb.piecewise_linear import _probabilities, gauss_newton_block
from tests.conftest import usps_batch


def _theta(flat, seed):
    noise = torch.randn(flat.num_params, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return flat.initial_theta() + 0.05 * noise


def _close(fast, full, rtol=1e-13):
    return float((fast - full).abs().max()) <= rtol * float(full.abs().max())


@pytest.mark.parametrize("name", ["cnn", "mlp"])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_paper_models_equal_the_full_hessian(usps, name, batch):
    flat = FlatModel(build_model(name, seed=batch, dtype=torch.float64))
    theta = _theta(flat, batch)
    x, y = usps_batch(usps, n=batch, seed=batch)
    full = dense_hessian(flat.loss_fn(x, y), theta)
    fast = closed_form_hessian(flat, theta, x, y)
    assert torch.equal(fast, fast.T)
    assert _close(fast, full)


def test_the_residual_is_what_makes_it_exact(usps):
    """Gauss-Newton alone (the same Jacobian, no residual) misses the CNN's Hessian by far more than rounding."""
    flat = FlatModel(build_model("cnn", dtype=torch.float64))
    theta = _theta(flat, 0)
    x, y = usps_batch(usps)
    full = dense_hessian(flat.loss_fn(x, y), theta)
    jac = torch.func.jacrev(lambda t: flat.forward(t, x))(theta)
    gn = gauss_newton_block(jac, _probabilities(flat, theta, x))
    assert not _close(gn, full, 1e-3)
    assert _close(closed_form_hessian(flat, theta, x, y), full)


def _zoo():
    torch.manual_seed(0)
    trailing = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(),
                             nn.Linear(2 * 3 * 3, 5), nn.ReLU(), nn.Linear(5, 3), nn.ReLU())
    with torch.no_grad():
        trailing[-2].bias += 2.0  # logits mostly active, so the trailing ReLU passes a nonzero Hessian
    return {
        "strided conv, no bias": (nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False), nn.ReLU(),
                                                nn.Conv2d(3, 2, 2, dilation=2), nn.ReLU(), nn.Flatten(),
                                                nn.Linear(2 * 2 * 2, 4)), (2, 7, 7)),
        "maxpool, trailing relu": (trailing, (1, 6, 6)),
        "three linear layers": (nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4, bias=False),
                                              nn.ReLU(), nn.Linear(4, 3)), (6,)),
        "one linear layer": (nn.Sequential(nn.Linear(5, 3)), (5,)),
    }


@pytest.mark.parametrize("case", sorted(_zoo()))
@pytest.mark.parametrize("batch", [1, 4])
def test_zoo_of_layouts_equal_the_full_hessian(case, batch):
    module, shape = _zoo()[case]
    flat = FlatModel(module.double())
    gen = torch.Generator().manual_seed(batch)
    theta = flat.initial_theta() + 0.3 * torch.randn(flat.num_params, generator=gen, dtype=torch.float64)
    x = torch.randn(batch, *shape, generator=gen, dtype=torch.float64)
    classes = flat.forward(theta, x).shape[-1]
    y = torch.randint(0, classes, (batch,), generator=gen)
    full = dense_hessian(flat.loss_fn(x, y), theta)
    assert float(full.abs().max()) > 0.0
    assert _close(closed_form_hessian(flat, theta, x, y), full)


def test_float32_is_within_float32_rounding(usps):
    flat = FlatModel(build_model("cnn", dtype=torch.float64))
    theta = _theta(flat, 2)
    x, y = usps_batch(usps, seed=2)
    full = dense_hessian(flat.loss_fn(x, y), theta)
    flat32 = FlatModel(build_model("cnn"))
    fast = closed_form_hessian(flat32, theta.float(), x.float(), y)
    assert fast.dtype == torch.float32
    assert _close(fast.double(), full, 1e-5)


def test_refuses_other_networks(usps):
    sigmoid = FlatModel(build_model("mlp", activation="sigmoid", dtype=torch.float64))
    assert affine_indices(sigmoid.module) is None
    grouped = nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.Flatten(), nn.Linear(2, 3))
    assert affine_indices(grouped) is None
    assert affine_indices(nn.Sequential(nn.ReLU())) is None
    assert affine_indices(build_model("cnn")) == [0, 3, 6, 9, 13]
    x, y = usps_batch(usps)
    with pytest.raises(ValueError, match="Linear/Conv2d"):
        closed_form_hessian(sigmoid, sigmoid.initial_theta(), x, y)


@pytest.mark.parametrize("method", ["dense", "lowrank"])
def test_minibatch_spectrum_of_the_cnn_takes_it(usps, method):
    """Both methods of the CNN (which has no input subspace) equal eigh of the float64 reference; "lowrank" keeps
    only the nonzero eigenpairs (the rest is the implicit zero eigenspace) and takes no Hessian-vector product."""
    flat = FlatModel(build_model("cnn", dtype=torch.float64))
    theta = _theta(flat, 4)
    x, y = usps_batch(usps, seed=4)
    ref = spectrum_from_matrix(dense_hessian(flat.loss_fn(x, y), theta))
    spec = minibatch_spectrum(flat, theta, x, y, method=method)
    scale = float(ref.eigenvalues.abs().max())
    lam = spec.eigenvalues
    if method == "lowrank":
        assert spec.info["probes"] == 0 and spec.info["structure"] == "piecewise-linear, closed form"
        assert 0 < lam.numel() < flat.num_params
        lam = torch.sort(torch.cat([lam, lam.new_zeros(flat.num_params - lam.numel())])).values
        h = spec.eigenvectors @ torch.diag(spec.eigenvalues) @ spec.eigenvectors.T
        assert _close(h, dense_hessian(flat.loss_fn(x, y), theta), 1e-12)
    assert float((lam - ref.eigenvalues).abs().max()) <= 1e-12 * scale
    assert spec.rank == ref.rank


# ------------------------------------------------------------------ deflation of rank-deficient layer blocks
def _low_rank_rows(seed=0):
    """A symmetric 400 x 400 matrix whose second block (200 coordinates) has rows of rank 30."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(400, 230, generator=gen, dtype=torch.float64)
    a[200:, :200] = 0.0  # the second block's rows live in the span of 30 columns of a
    return a @ a.T


def test_layer_range_bases_find_the_rank_and_keep_the_spectrum():
    from chaosnb.curvature import _deflated, layer_range_bases

    h = _low_rank_rows()
    blocks = [(0, 200), (200, 200)]
    bases = layer_range_bases(h, blocks, 1e-12)
    assert bases[0] is None and bases[1] is not None and bases[1].shape == (200, 30)
    m, up = _deflated(h, blocks, bases)
    assert m.shape == (230, 230)
    lam, w = torch.linalg.eigh(m)
    full = torch.linalg.eigvalsh(h)
    nonzero = full[full.abs() > 1e-9 * float(full.abs().max())]
    assert torch.allclose(torch.sort(lam[lam.abs() > 1e-9 * float(lam.abs().max())]).values, nonzero,
                          rtol=0, atol=1e-10 * float(full.abs().max()))
    v = up(w)
    assert torch.allclose(h @ v, v * lam, atol=1e-9 * float(full.abs().max()))


def test_a_sketch_that_misses_the_range_is_refused(monkeypatch):
    """Probes blind to where the block's rows live: the sketch sees rank 0, the certificate fails, no deflation."""
    from chaosnb import curvature

    h = _low_rank_rows()
    real = curvature._probe_block

    def blind(n, width, seed, index, dtype, device=None):
        omega = real(n, width, seed, index, dtype, device).clone()
        omega[:] = 0.0
        return omega

    monkeypatch.setattr(curvature, "_probe_block", blind)
    assert curvature.layer_range_bases(h, [(0, 200), (200, 200)], 1e-12) == [None, None]


def test_the_cnn_spectrum_is_deflated_and_exact(usps):
    flat = FlatModel(build_model("cnn", dtype=torch.float64))
    theta = _theta(flat, 5)
    x, y = usps_batch(usps, seed=5)
    spec = minibatch_spectrum(flat, theta, x, y)
    ranks = spec.info["layer_ranks"]
    assert ranks[:3] == [40, 148, 296] and ranks[4] == 90 and ranks[3] < 584 // 2  # the last convolution shrinks
    assert spec.info["deflated_dim"] == sum(ranks) < flat.num_params
    full = dense_hessian(flat.loss_fn(x, y), theta)
    ref = spectrum_from_matrix(full)
    lam = torch.sort(torch.cat([spec.eigenvalues, spec.eigenvalues.new_zeros(spec.implicit_zeros)])).values
    assert float((lam - ref.eigenvalues).abs().max()) <= 1e-12 * float(ref.eigenvalues.abs().max())
    h = spec.eigenvectors @ torch.diag(spec.eigenvalues) @ spec.eigenvectors.T
    assert _close(h, full, 1e-12)
