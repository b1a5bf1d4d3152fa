"""The authors' numerics (issue 11 item 5): the float32 tangent map against dense float64 references."""

import math

import numpy as np
import pytest
import torch

from chaosnb.lyapunov import Float32TangentMap, TangentMap


def _hessians(n: int, rank: int, steps: int, seed: int = 0):
    """Low-rank symmetric 'Hessians' (rank ``rank`` < n, sharing a null space), as mini-batch Hessians are."""
    gen = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(n, rank, generator=gen, dtype=torch.float64))[0]
    out = []
    for _ in range(steps):
        m = torch.randn(rank, rank, generator=gen, dtype=torch.float64)
        out.append(basis @ (m + m.T) @ basis.T * 5.0)
    return out


def test_float32_tangent_map_matches_the_dense_product():
    n, lr = 40, 0.005
    hs = _hessians(n, n, 5)
    tm = Float32TangentMap(n, lr)
    y = torch.eye(n, dtype=torch.float64)
    for h in hs:
        tm.step(h)
        y = (torch.eye(n, dtype=torch.float64) - lr * h) @ y
    ref = torch.sort(torch.log(torch.linalg.svdvals(y)) / 5, descending=True).values
    got = tm.lyapunov().exponents
    assert torch.allclose(got, ref, atol=1e-4)
    lam, vecs = torch.linalg.eigh(hs[0])  # an eigenpair set steps the same as the dense matrix
    a, b = Float32TangentMap(n, lr), Float32TangentMap(n, lr)
    a.step(hs[0])
    b.step((lam, vecs))
    assert torch.allclose(a._y, b._y, atol=1e-5)


def test_float32_null_space_noise_makes_directions_chaotic():
    """The null space is exactly non-chaotic (exponent 0): the exact engine counts none of it, the float32 map and
    an eigh of Y^T Y without tolerance count a large share of it as chaotic (the paper's "starts high")."""
    n, rank, lr = 300, 20, 0.05
    hs = _hessians(n, rank, 3, seed=1)
    exact, f32 = TangentMap(n, lr), Float32TangentMap(n, lr)
    for h in hs:
        exact.step(h)
        f32.step(h)
    dim_exact = exact.lyapunov().chaotic_dim
    dim32 = f32.lyapunov().chaotic_dim
    assert dim_exact <= rank
    assert dim32 - dim_exact > 0.2 * (n - rank)
    assert math.isfinite(f32.lyapunov().max_exponent)


def test_float32_tangent_map_rejects_momentum_and_restores_its_state():
    with pytest.raises(ValueError, match="plain SGD only"):
        Float32TangentMap(10, 0.1, momentum=0.9)
    with pytest.raises(ValueError, match="t >= 1"):
        Float32TangentMap(10, 0.1).lyapunov()
    a = Float32TangentMap(10, 0.1)
    a.step(_hessians(10, 10, 1)[0])
    b = Float32TangentMap(10, 0.1)
    b.load_state_dict(a.state_dict())
    assert b.t == 1 and np.array_equal(a._y.numpy(), b._y.numpy())
