"""The exact Hessian of a one-hidden-layer MLP in its input subspace, in closed form (no Hessian-vector product).

For ``[Flatten,] Linear(W1, b1), act, Linear(W2, b2)`` and the mean cross-entropy over a batch of B samples, with
a_b = W1 x_b + b1, h_b = act(a_b), z_b = W2 h_b + b2, g_b = (softmax(z_b) - e_(y_b)) / B and
A_b = (diag(p_b) - p_b p_b^T) / B, the Hessian is H = sum_b J_b^T A_b J_b + R, where J_b is the logit Jacobian

    dz_bk / dW1[j, :] = W2[k, j] act'(a_bj) x_b,   dz_bk / db1[j] = W2[k, j] act'(a_bj),
    dz_bk / dW2[k', j] = delta_kk' h_bj,           dz_bk / db2[k'] = delta_kk',

and the residual R = sum_bk g_bk d^2 z_bk / d theta^2 has only two kinds of entries (z is linear in W2, b2 and
depends on the first layer's row j only through a_bj):

    R[W2(k, j), (W1, b1)(j, :)] = sum_b g_bk act'(a_bj) u_b,
    R[(W1, b1)(j, :), (W1, b1)(j, :)] = sum_b (g_b^T W2)_j act''(a_bj) u_b u_b^T,          u_b = (x_b, 1).

In the coordinates of the :class:`chaosnb.curvature.InputSubspace` P (the first layer's rows in an orthonormal
basis X of span{x_b}, so x_b = X xi_b) every formula holds with xi_b in place of x_b, and H = P (P^T H P) P^T
exactly. This costs O(B C d^2) for d = dim P (390 for the paper's MLP at batch 8), against the d - n_max
Hessian-vector products of :func:`chaosnb.piecewise_linear.subspace_hessian`; act' and act'' come from the
activation module by forward-mode differentiation, so ReLU, sigmoid and tanh are all exact (act'' = 0 for ReLU).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import jvp

from chaosnb.piecewise_linear import gauss_newton_block, logit_derivatives

ACTIVATIONS = (nn.ReLU, nn.Sigmoid, nn.Tanh)


def layers(module: nn.Module) -> tuple[nn.Linear, nn.Module, nn.Linear] | None:
    """(first Linear, activation, second Linear) of ``nn.Sequential([Flatten,] Linear, act, Linear)`` with both
    biases and an elementwise activation from ACTIVATIONS; None for any other module."""
    if not isinstance(module, nn.Sequential):
        return None
    children = list(module)
    if children and isinstance(children[0], nn.Flatten):
        children = children[1:]
    if len(children) != 3:
        return None
    first, act, second = children
    if not (isinstance(first, nn.Linear) and isinstance(act, ACTIVATIONS) and isinstance(second, nn.Linear)):
        return None
    if first.bias is None or second.bias is None:
        return None
    return first, act, second


def _derivatives(act: nn.Module, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(act(a), act'(a), act''(a)) elementwise, by forward-mode differentiation of the module."""
    ones = torch.ones_like(a)

    def first(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return jvp(act, (v,), (ones,))

    (h, d1), (_, d2) = jvp(first, (a,), (ones,))
    return h, d1, d2


def subspace_hessian(flat, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, subspace) -> torch.Tensor:
    """P^T H P (d x d) in closed form (module docstring) for a one-hidden-layer MLP ``flat`` (a
    :class:`chaosnb.models.FlatModel`; see :func:`one_hidden_layer`) on the batch (x, y) at ``theta``, P the
    :func:`chaosnb.curvature.input_subspace` of x. Raises ValueError for another architecture or a subspace of
    another layout."""
    found = layers(flat.module)
    if found is None:
        raise ValueError("one_hidden_layer.subspace_hessian needs nn.Sequential([Flatten,] Linear, ReLU|Sigmoid|"
                         "Tanh, Linear) with biases; use piecewise_linear.subspace_hessian for other networks")
    first, act, second = found
    hidden, inputs, classes = first.out_features, first.in_features, second.out_features
    params = flat.unflatten(theta.detach())
    names = [s.name for s in flat.specs]
    if subspace.offset != 0 or subspace.rows != hidden or subspace.cols != inputs or len(names) != 4:
        raise ValueError("the input subspace does not match the first layer (offset 0, rows x cols = "
                         f"{hidden} x {inputs}); build it with curvature.input_subspace")
    w1, b1, w2, b2 = (params[n] for n in names)
    dtype, dev = theta.dtype, theta.device
    batch = x.shape[0]
    data = x.reshape(batch, -1).to(dtype)
    basis = subspace.basis.to(dtype)
    s = basis.shape[1]
    a = data @ w1.T + b1  # (B, H)
    h, d1, d2 = _derivatives(act, a)
    z = h @ w2.T + b2
    p, g = logit_derivatives(z, y)  # (B, C) each
    u = torch.cat([data @ basis, torch.ones(batch, 1, dtype=dtype, device=dev)], dim=1)  # (B, s + 1): (xi_b, 1)

    d = subspace.dim
    # P's coordinates: W1's row j at j*s + i (i < s), then b1, W2 (row-major), b2
    rows = torch.arange(hidden, device=dev)
    first_idx = torch.cat([rows[:, None] * s + torch.arange(s, device=dev), hidden * s + rows[:, None]], dim=1)
    w2_idx = hidden * s + hidden + torch.arange(classes * hidden, device=dev).view(classes, hidden)
    b2_idx = hidden * s + hidden + classes * hidden + torch.arange(classes, device=dev)

    jac = torch.zeros(batch, classes, d, dtype=dtype, device=dev)
    jac[:, :, first_idx.reshape(-1)] = (w2[None, :, :, None] * d1[:, None, :, None] * u[:, None, None, :]).reshape(
        batch, classes, -1)
    eye = torch.eye(classes, dtype=dtype, device=dev)
    jac[:, :, w2_idx.reshape(-1)] = (eye[None, :, :, None] * h[:, None, None, :]).reshape(batch, classes, -1)
    jac[:, :, b2_idx] = eye
    m = gauss_newton_block(jac, p)

    cross = torch.einsum("bk,bj,bi->kji", g, d1, u)  # R[W2(k, j), first(j, i)]
    r_rows = w2_idx[:, :, None].expand(classes, hidden, s + 1)
    r_cols = first_idx[None].expand(classes, hidden, s + 1)
    m.index_put_((r_rows, r_cols), cross, accumulate=True)
    m.index_put_((r_cols, r_rows), cross, accumulate=True)
    curv = torch.einsum("bj,bi,bl->jil", (g @ w2) * d2, u, u)  # R[first(j, i), first(j, l)]
    m.index_put_((first_idx[:, :, None].expand(-1, -1, s + 1), first_idx[:, None, :].expand(-1, s + 1, -1)), curv,
                 accumulate=True)
    return 0.5 * (m + m.T)
