"""The exact Hessian of a piecewise-linear network from about half of its columns.

For a network built from affine layers (``Linear``, ``Conv2d``) and piecewise-linear maps between them (``ReLU``,
``MaxPool2d``, ``Flatten``), the logits z(theta) are, almost everywhere, affine in the parameters theta_l of any one
affine layer l with all other parameters fixed (the activation pattern is locally constant). So
d^2 z / d theta_l d theta_l = 0, and the Hessian of the cross-entropy loss L(theta) = mean_b CE(z_b(theta), y_b)

    H = sum_b J_b^T A_b J_b  +  sum_b sum_k dL/dz_bk  d^2 z_bk / d theta^2        (Gauss-Newton + residual)

has, in the diagonal block of layer l, only its Gauss-Newton part: H_ll = sum_b J_bl^T A_b J_bl, with J_bl the
Jacobian of z_b with respect to theta_l and A_b = (diag(p_b) - p_b p_b^T) / B the Hessian of the mean
cross-entropy in the logits. Every off-diagonal block (l, m) appears in the columns of layer m or (transposed) of
layer l. Computing the Hessian-vector products of the columns of every layer except the largest one, plus that
layer's Gauss-Newton block from the B x C logit Jacobian, therefore gives the whole Hessian exactly (up to
rounding): N - n_max products instead of N. For the paper's CNN (1,158 parameters, largest layer 584) that is 574
products; for the MLP (5,350, largest 5,140) 210.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import grad, jacrev, vjp, vmap

AFFINE = (nn.Linear, nn.Conv2d)
PIECEWISE_LINEAR = (nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Identity)


def is_piecewise_linear(module: nn.Module) -> bool:
    """True for an ``nn.Sequential`` of affine layers and piecewise-linear maps (the structure the theorem in the
    module docstring needs)."""
    return isinstance(module, nn.Sequential) and all(isinstance(m, AFFINE + PIECEWISE_LINEAR) for m in module)


def layer_blocks(flat) -> list[tuple[int, int]]:
    """(offset, size) of each affine layer's parameters (weight and bias together) in the flat vector."""
    blocks: dict[str, list[int]] = {}
    for spec in flat.specs:
        layer = spec.name.rsplit(".", 1)[0]
        start, size = blocks.get(layer, [spec.offset, 0])
        if start + size != spec.offset:
            raise ValueError(f"the parameters of layer {layer!r} are not contiguous in the flat vector")
        blocks[layer] = [start, size + spec.numel]
    return [(start, size) for start, size in blocks.values()]


def piecewise_linear_hessian(flat, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *,
                             check: bool = True) -> torch.Tensor:
    """The full (N, N) Hessian of the mean cross-entropy of ``flat`` on the batch (x, y) at ``theta``: the columns
    of every layer but the largest by Hessian-vector products, that layer's diagonal block by Gauss-Newton (see
    the module docstring); symmetrised. Raises ValueError for a network that is not piecewise linear (``check=False``
    skips that test: only for showing what goes wrong without the premise)."""
    if check and not is_piecewise_linear(flat.module):
        raise ValueError("piecewise_linear_hessian needs an nn.Sequential of Linear/Conv2d layers and "
                         "ReLU/MaxPool2d/Flatten maps; use curvature.dense_hessian for other networks")
    theta = theta.detach()
    x = x.to(theta.dtype)
    n = theta.numel()
    blocks = layer_blocks(flat)
    start, size = max(blocks, key=lambda b: b[1])
    dev = theta.device
    others = torch.cat([torch.arange(0, start, device=dev), torch.arange(start + size, n, device=dev)])
    loss = flat.loss_fn(x, y)
    _, hvp = vjp(grad(loss), theta)
    basis = torch.zeros(len(others), n, dtype=theta.dtype, device=dev)
    basis[torch.arange(len(others), device=dev), others] = 1.0
    (columns,) = vmap(hvp)(basis) if len(others) else (basis,)  # rows H[others, :]

    def logits_in_block(part: torch.Tensor) -> torch.Tensor:
        return flat.forward(torch.cat([theta[:start], part, theta[start + size:]]), x)

    jac = jacrev(logits_in_block)(theta[start:start + size])  # (B, C, size)
    return _assemble(columns, others, start, size, gauss_newton_block(jac, _probabilities(flat, theta, x)))


def gauss_newton_block(jac: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """sum_b J_b^T A_b J_b for the logit Jacobian ``jac`` (B, C, m) of some coordinates and the softmax
    probabilities ``p`` (B, C), A_b = (diag(p_b) - p_b p_b^T) / B the Hessian of the mean cross-entropy in the
    logits."""
    aj = (p.unsqueeze(-1) * jac - p.unsqueeze(-1) * torch.einsum("bc,bcn->bn", p, jac).unsqueeze(1)) / jac.shape[0]
    return torch.einsum("bcn,bcm->nm", jac, aj)


def logit_derivatives(z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(p, g) of the mean cross-entropy of the logits ``z`` (B, C) with labels ``y``: the softmax probabilities p
    and the logit gradient g_bk = (p_bk - [y_b = k]) / B, the weights of the residual sum_bk g_bk d^2 z_bk."""
    p = torch.softmax(z, dim=-1)
    return p, (p - torch.nn.functional.one_hot(y, z.shape[-1]).to(p.dtype)) / z.shape[0]


def _probabilities(flat, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(flat.forward(theta, x), dim=-1)  # (B, C)


def _assemble(rows: torch.Tensor, others: torch.Tensor, start: int, size: int, block: torch.Tensor
              ) -> torch.Tensor:
    """The symmetric Hessian from its rows ``others`` (k x n) and the diagonal block [start, start + size)."""
    n = rows.shape[1]
    h = torch.empty(n, n, dtype=rows.dtype, device=rows.device)
    h[others] = rows
    h[:, others] = rows.T
    h[start:start + size, start:start + size] = block
    return 0.5 * (h + h.T)


def subspace_hessian(flat, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, subspace
                     ) -> tuple[torch.Tensor, int]:
    """(P^T H P, number of Hessian-vector products) for the :class:`chaosnb.curvature.InputSubspace` P of a
    piecewise-linear network: H = P (P^T H P) P^T exactly, since range(H) lies in range(P).

    The same theorem as :func:`piecewise_linear_hessian`, in P's d coordinates: each affine layer's parameters map
    to a block of coordinates (its first-layer weights to rows x s), the layer with the most coordinates gets its
    diagonal block from the Gauss-Newton part (the logit Jacobian in its coordinates), every other coordinate
    from one Hessian-vector product P^T H P e_i. For the paper's MLP at batch 8 (d = 390): 180 products and a
    210-column Gauss-Newton block, against the ~264 products of the sketch and N = 5,350 of the dense Hessian."""
    if not is_piecewise_linear(flat.module):
        raise ValueError("subspace_hessian needs a piecewise-linear network (see piecewise_linear_hessian)")
    theta = theta.detach()
    x = x.to(theta.dtype)
    d, dev = subspace.dim, theta.device
    w1_end = subspace.offset + subspace.rows * subspace.cols
    shrink = subspace.rows * (subspace.cols - subspace.basis.shape[1])  # coordinates P drops
    coords = []  # each layer's block in P's coordinates
    for start, size in layer_blocks(flat):
        end = start + size
        inside = start <= subspace.offset and w1_end <= end  # the block holds the first layer's weights
        coords.append((start - (shrink if start >= w1_end else 0), size - (shrink if inside else 0)))
    start, size = max(coords, key=lambda b: b[1])
    others = torch.cat([torch.arange(0, start, device=dev), torch.arange(start + size, d, device=dev)])
    loss = flat.loss_fn(x, y)
    _, hvp = vjp(grad(loss), theta)
    unit = torch.zeros(d, len(others), dtype=theta.dtype, device=dev)
    unit[others, torch.arange(len(others), device=dev)] = 1.0
    columns = subspace.down(vmap(hvp)(subspace.up(unit).T)[0].T) if len(others) else unit  # (d, k)

    def logits_in_block(part: torch.Tensor) -> torch.Tensor:
        z = torch.zeros(d, 1, dtype=theta.dtype, device=dev)
        z = torch.cat([z[:start], part[:, None], z[start + size:]])
        return flat.forward(theta + subspace.up(z)[:, 0], x)

    jac = jacrev(logits_in_block)(torch.zeros(size, dtype=theta.dtype, device=dev))  # (B, C, size)
    block = gauss_newton_block(jac, _probabilities(flat, theta, x))
    return _assemble(columns.T, others, start, size, block), len(others)
