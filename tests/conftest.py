"""Shared fixtures: a zoo of tiny float64 models with a mini-batch, so every method runs on the same cases."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from chaosnb.models import FlatModel, build_model

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# name -> (model name, kwargs, input shape)
TINY_MODELS = {
    "mlp-relu": ("mlp", {"in_features": 6, "hidden": 5, "classes": 3, "activation": "relu"}, (6,)),
    "mlp-sigmoid": ("mlp", {"in_features": 6, "hidden": 5, "classes": 3, "activation": "sigmoid"}, (6,)),
    "cnn-relu": ("cnn", {"channels": (2, 2, 2, 2), "classes": 3, "activation": "relu"}, (1, 16, 16)),
}


def tiny_case(name: str, batch: int = 4, seed: int = 0, dtype: torch.dtype = torch.float64):
    """(flat model, theta, x, y) for one case of the zoo."""
    model, kwargs, shape = TINY_MODELS[name]
    kwargs = dict(kwargs)
    activation = kwargs.pop("activation")
    flat = FlatModel(build_model(model, activation=activation, seed=seed, dtype=dtype, **kwargs))
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, *shape, generator=gen, dtype=dtype)
    classes = kwargs.get("classes", 10)
    y = torch.randint(0, classes, (batch,), generator=gen)
    return flat, flat.initial_theta(), x, y


def usps_batch(data, n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n seeded random training samples of a loaded dataset, inputs in float64."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train_x), generator=g)[:n]
    return data.train_x[idx].double(), data.train_y[idx]


@pytest.fixture(scope="module")
def usps():
    """The USPS dataset (from $CHAOSNB_DATA)."""
    from chaosnb.data import load_dataset

    return load_dataset("usps")


@pytest.fixture(params=sorted(TINY_MODELS))
def tiny(request):
    return tiny_case(request.param)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The data root the tests read: $CHAOSNB_DATA, else ../shared/data beside the repository."""
    env = os.environ.get("CHAOSNB_DATA")
    root = Path(env) if env else SHARED_DATA
    if not root.exists():
        pytest.fail(f"test data not found at {root}; set CHAOSNB_DATA to the datasets folder")
    os.environ["CHAOSNB_DATA"] = str(root)
    return root
