"""The closed-form P^T H P of a one-hidden-layer MLP against torch.func.hessian (float64) and against the
Hessian-vector-product path of :mod:`chaosnb.piecewise_linear`."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import hessian, jacrev

from chaosnb import curvature, one_hidden_layer
from chaosnb.models import FlatModel, build_model
from chaosnb.piecewise_linear import subspace_hessian as hvp_subspace_hessian
from tests.conftest import tiny_case


def _projected_reference(flat, theta, x, y, sub) -> tuple[torch.Tensor, torch.Tensor]:
    """(P^T H P, H) with H = torch.func.hessian of the mean cross-entropy, P built column by column."""
    h = hessian(flat.loss_fn(x, y))(theta)
    p = sub.up(torch.eye(sub.dim, dtype=h.dtype))
    return p.T @ h @ p, h


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_closed_form_equals_the_float64_hessian(activation, batch):
    """Away from the initialisation (random theta, so the residual term and the ReLU pattern both matter), for
    s = batch < 6 and s = 6 = the input dimension: P^T H P within 1e-13 of max|H|, and H = P (P^T H P) P^T."""
    flat, theta, x, y = tiny_case("mlp-relu", batch=batch)  # in 6, hidden 5, classes 3
    flat = FlatModel(build_model("mlp", activation=activation, in_features=6, hidden=5, classes=3,
                                 dtype=torch.float64))
    theta = theta + 0.5 * torch.randn(theta.shape, generator=torch.Generator().manual_seed(batch), dtype=theta.dtype)
    sub = curvature.input_subspace(flat, x)
    m = one_hidden_layer.subspace_hessian(flat, theta, x, y, sub)
    ref, h = _projected_reference(flat, theta, x, y, sub)
    scale = float(h.abs().max())
    assert float((m - ref).abs().max()) <= 1e-13 * scale
    assert float((sub.up(sub.up(m).T).T - h).abs().max()) <= 1e-13 * scale
    assert torch.equal(m, m.T)


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_residual_terms_are_needed(activation):
    """The check above can fail: the Gauss-Newton part alone (no residual term) misses the Hessian by far more
    than rounding, for ReLU (the W2-first layer cross block) as for sigmoid (act'' too)."""
    flat, theta, x, y = tiny_case(f"mlp-{activation}", batch=3)
    theta = theta + 0.5 * torch.randn(theta.shape, generator=torch.Generator().manual_seed(0), dtype=theta.dtype)
    sub = curvature.input_subspace(flat, x)
    _, h = _projected_reference(flat, theta, x, y, sub)
    logits = jacrev(lambda t: flat.forward(t, x))(theta)  # (B, C, N)
    p = torch.softmax(flat.forward(theta, x), dim=-1)
    a = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]) / x.shape[0]
    gn = torch.einsum("bcn,bcd,bdm->nm", logits, a, logits)
    assert float((gn - h).abs().max()) > 1e-3 * float(h.abs().max())


def test_equals_the_hessian_vector_product_path_on_the_paper_mlp(data_root):
    """The paper's MLP (N = 5,350) on a USPS batch of 8 after a random step away from the initialisation: the
    closed form and the 180 Hessian-vector products of piecewise_linear.subspace_hessian agree to 1e-13."""
    from chaosnb.data import BatchSampler, load_dataset

    data = load_dataset("usps")
    x, y = BatchSampler(len(data.train_x), 8, seed=3).batch(data, 0)
    flat = FlatModel(build_model("mlp", dtype=torch.float64))
    theta = flat.initial_theta()
    theta = theta + 0.05 * torch.randn(theta.shape, generator=torch.Generator().manual_seed(1), dtype=theta.dtype)
    x = x.double()
    sub = curvature.input_subspace(flat, x)
    closed = one_hidden_layer.subspace_hessian(flat, theta, x, y, sub)
    products, count = hvp_subspace_hessian(flat, theta, x, y, sub)
    assert count == 180 and sub.dim == 390
    assert float((closed - products).abs().max()) <= 1e-13 * float(products.abs().max())
    spec = curvature.minibatch_spectrum(flat, theta, x, y)
    assert spec.info["probes"] == 0 and "closed form" in spec.info["structure"]


@pytest.mark.parametrize("module", [
    nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2)),  # two hidden layers
    nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2)),  # no first bias
    nn.Sequential(nn.Linear(4, 3), nn.Softplus(), nn.Linear(3, 2)),  # an activation not in the list
    nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2), nn.ReLU()),  # not Linear, act, Linear
])
def test_other_architectures_are_refused(module):
    flat = FlatModel(module.double())
    assert one_hidden_layer.layers(flat.module) is None
    x = torch.randn(5, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="one_hidden_layer"):
        one_hidden_layer.subspace_hessian(flat, flat.initial_theta(), x, torch.zeros(5, dtype=torch.long),
                                          curvature.input_subspace(flat, x))


def test_the_cnn_is_refused():
    flat, theta, x, y = tiny_case("cnn-relu")
    assert one_hidden_layer.layers(flat.module) is None
