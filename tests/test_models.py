"""The paper's MLP and CNN: parameter counts, seeded initialisation, the flat-parameter view."""

import pytest
import torch
from torch.func import grad

from chaosnb.models import FlatModel, build_model, make_flat_model, num_parameters


def test_paper_parameter_counts():
    assert num_parameters(build_model("mlp")) == 5350
    assert num_parameters(build_model("mlp", activation="sigmoid")) == 5350
    assert num_parameters(build_model("cnn")) == 1158


def test_cnn_spatial_path_and_output_shape():
    out = build_model("cnn")(torch.zeros(2, 1, 16, 16))
    assert out.shape == (2, 10)


def test_seeded_default_initialisation_is_reproducible_and_leaves_global_rng():
    state = torch.random.get_rng_state()
    a, b = make_flat_model("mlp", seed=3)[1], make_flat_model("mlp", seed=3)[1]
    assert torch.equal(a, b)
    assert not torch.equal(a, make_flat_model("mlp", seed=4)[1])
    assert torch.equal(state, torch.random.get_rng_state())
    # PyTorch default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the first Linear layer
    w = build_model("mlp", seed=3)[1].weight.detach()
    assert float(w.abs().max()) <= 1 / 16 and float(w.abs().max()) > 0.9 / 16


def test_flat_view_matches_module():
    module = build_model("cnn", seed=1, dtype=torch.float64)
    flat = FlatModel(module)
    theta = flat.initial_theta()
    x = torch.randn(3, 1, 16, 16, dtype=torch.float64)
    assert torch.allclose(flat.forward(theta, x), module(x))
    y = torch.tensor([0, 3, 9])
    g = grad(flat.loss_fn(x, y))(theta)
    module.zero_grad()
    torch.nn.functional.cross_entropy(module(x), y).backward()
    ref = torch.cat([p.grad.reshape(-1) for p in module.parameters()])
    assert torch.allclose(g, ref)
    flat.load_into_module(theta * 2)
    assert torch.allclose(flat.initial_theta(), theta * 2)


def test_unknown_model_and_activation_list_valid_options():
    with pytest.raises(ValueError, match="mlp, cnn"):
        build_model("resnet")
    with pytest.raises(ValueError, match="relu, sigmoid"):
        build_model("mlp", activation="gelu")
    with pytest.raises(ValueError, match="shape"):
        FlatModel(build_model("mlp")).unflatten(torch.zeros(3))
