"""The Hessian of a piecewise-linear network from about half of its columns (chaosnb.piecewise_linear) against
the full reverse-over-reverse Hessian in float64, on the paper's MLP and CNN with real mini-batches."""

from __future__ import annotations

import pytest
import torch

from chaosnb.curvature import dense_hessian, minibatch_spectrum, spectrum_from_matrix
from chaosnb.models import FlatModel, build_model
from chaosnb.piecewise_linear import is_piecewise_linear, layer_blocks, piecewise_linear_hessian
from tests.conftest import usps_batch


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("seed", [0, 1])
def test_equals_the_full_hessian_in_float64(usps, name, seed):
    flat = FlatModel(build_model(name, seed=seed, dtype=torch.float64))
    theta = flat.initial_theta() + 0.05 * torch.randn(flat.num_params, generator=torch.Generator().manual_seed(seed),
                                                        dtype=torch.float64)
    x, y = usps_batch(usps, seed=seed)
    full = dense_hessian(flat.loss_fn(x, y), theta)
    fast = piecewise_linear_hessian(flat, theta, x, y)
    assert torch.allclose(fast, fast.T)
    assert float((fast - full).abs().max()) <= 1e-13 * float(full.abs().max())
    # the residual (non-Gauss-Newton) part is really there: the off-diagonal blocks are not Gauss-Newton alone
    blocks = layer_blocks(flat)
    assert sum(size for _, size in blocks) == flat.num_params and len(blocks) == (2 if name == "mlp" else 5)


def test_layer_blocks_of_the_paper_models():
    assert [s for _, s in layer_blocks(FlatModel(build_model("cnn")))] == [40, 148, 296, 584, 90]
    assert [s for _, s in layer_blocks(FlatModel(build_model("mlp")))] == [5140, 210]


def test_refuses_networks_that_are_not_piecewise_linear(usps):
    flat = FlatModel(build_model("mlp", activation="sigmoid", dtype=torch.float64))
    assert not is_piecewise_linear(flat.module)
    x, y = usps_batch(usps)
    with pytest.raises(ValueError, match="piecewise"):
        piecewise_linear_hessian(flat, flat.initial_theta(), x, y)
    # the premise matters: with a smooth activation the layers' diagonal blocks are not Gauss-Newton alone
    theta = flat.initial_theta()
    full = dense_hessian(flat.loss_fn(x, y), theta)
    wrong = piecewise_linear_hessian(flat, theta, x, y, check=False)
    assert float((wrong - full).abs().max()) > 1e-3 * float(full.abs().max())


def test_minibatch_spectrum_uses_it_and_matches_the_dense_reference(usps):
    flat = FlatModel(build_model("cnn", dtype=torch.float64))
    theta = flat.initial_theta()
    x, y = usps_batch(usps, seed=3)
    spec = minibatch_spectrum(flat, theta, x, y, method="dense")
    ref = spectrum_from_matrix(dense_hessian(flat.loss_fn(x, y), theta))
    scale = float(ref.eigenvalues.abs().max())
    assert float((spec.eigenvalues - ref.eigenvalues).abs().max()) <= 1e-12 * scale
    assert spec.tol == pytest.approx(ref.tol, rel=1e-9)
