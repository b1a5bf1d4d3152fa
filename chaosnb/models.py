"""The paper's models (MLP 256-20-10, CNN with 1,158 parameters) and a flat-parameter view.

All later mathematics treats a network as a function of ONE parameter vector ``theta`` in R^N,
through :class:`FlatModel` (``torch.func.functional_call`` on unflattened views of ``theta``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

MODELS = ("mlp", "cnn")
ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


def mlp(in_features: int = 256, hidden: int = 20, classes: int = 10, activation: str = "relu") -> nn.Module:
    """flatten -> Linear(in, hidden) -> activation -> Linear(hidden, classes); 5,350 parameters at 256-20-10."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), _activation(activation),
                         nn.Linear(hidden, classes))


def cnn(channels: tuple[int, ...] = (4, 4, 8, 8), classes: int = 10, activation: str = "relu") -> nn.Module:
    """Four blocks Conv3x3(pad 1) -> act -> MaxPool2 (16->8->4->2->1), flatten, Linear; 1,158 parameters."""
    layers: list[nn.Module] = []
    c_in = 1
    for c_out in channels:
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), _activation(activation), nn.MaxPool2d(2)]
        c_in = c_out
    layers += [nn.Flatten(), nn.Linear(c_in, classes)]
    return nn.Sequential(*layers)


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid activations are: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def build_model(name: str, activation: str = "relu", seed: int = 0, dtype: torch.dtype = torch.float32,
                **kwargs) -> nn.Module:
    """Build ``"mlp"`` or ``"cnn"`` with PyTorch's default initialisation drawn under ``seed``.

    The global RNG state is left untouched (the draw happens inside ``torch.random.fork_rng``).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models are: {', '.join(MODELS)}")
    factory = {"mlp": mlp, "cnn": cnn}[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = factory(activation=activation, **kwargs)
    return module.to(dtype)


def num_parameters(module: nn.Module) -> int:
    """Total number of trainable scalars."""
    return sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: tuple[int, ...]
    offset: int
    numel: int


class FlatModel:
    """A module seen as a function of one flat parameter vector.

    ``theta`` is the concatenation of ``module.parameters()`` in registration order. ``forward(theta, x)``
    and ``loss(theta, x, y)`` are pure functions of ``theta`` (no module state is read or written), so
    ``torch.func`` transforms (grad, jvp, vmap, hessian, jacrev) apply to them directly.
    """

    def __init__(self, module: nn.Module):
        self.module = module
        specs, offset = [], 0
        for name, p in module.named_parameters():
            specs.append(ParamSpec(name, tuple(p.shape), offset, p.numel()))
            offset += p.numel()
        self.specs: tuple[ParamSpec, ...] = tuple(specs)
        self.num_params = offset

    def initial_theta(self) -> torch.Tensor:
        """The module's current parameters, flattened (a detached copy)."""
        return torch.cat([p.detach().reshape(-1) for p in self.module.parameters()]).clone()

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``theta`` shaped like each named parameter."""
        if theta.shape != (self.num_params,):
            raise ValueError(f"theta must have shape ({self.num_params},), got {tuple(theta.shape)}")
        return {s.name: theta[s.offset : s.offset + s.numel].view(s.shape) for s in self.specs}

    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits of the network with parameters ``theta`` on inputs ``x``."""
        return functional_call(self.module, self.unflatten(theta), (x.to(theta.dtype),))

    def loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the mini-batch (x, y)."""
        return F.cross_entropy(self.forward(theta, x), y)

    def loss_fn(self, x: torch.Tensor, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """theta -> L_B(theta) for a fixed mini-batch."""
        return lambda theta: self.loss(theta, x, y)

    def load_into_module(self, theta: torch.Tensor) -> None:
        """Copy ``theta`` into the module's parameters."""
        with torch.no_grad():
            for p, s in zip(self.module.parameters(), self.specs, strict=True):
                p.copy_(theta[s.offset : s.offset + s.numel].view(s.shape))

    def accuracy(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Fraction of correctly classified samples."""
        with torch.no_grad():
            return (self.forward(theta, x).argmax(-1) == y).to(theta.dtype).mean()

    def evaluate(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                 chunk: int = 4096) -> tuple[float, float]:
        """(mean loss, accuracy) over a whole split, in chunks."""
        total_loss, correct = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(x), chunk):
                logits = self.forward(theta, x[i : i + chunk].to(theta.dtype))
                total_loss += float(F.cross_entropy(logits, y[i : i + chunk], reduction="sum"))
                correct += int((logits.argmax(-1) == y[i : i + chunk]).sum())
        return total_loss / len(x), correct / len(x)


def make_flat_model(name: str, activation: str = "relu", seed: int = 0, dtype: torch.dtype = torch.float32,
                    **kwargs) -> tuple[FlatModel, torch.Tensor]:
    """(flat view, initial theta) of a freshly initialised model."""
    flat = FlatModel(build_model(name, activation, seed, dtype, **kwargs))
    return flat, flat.initial_theta()


def linear_init_bounds(in_features: int) -> float:
    """PyTorch's default U(-b, b) bound for a Linear layer's weight and bias: b = 1/sqrt(in_features)."""
    return 1.0 / math.sqrt(in_features)
