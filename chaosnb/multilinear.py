"""The exact Hessian of a piecewise-linear network in closed form, from its layers (no Hessian-vector product).

On each activation region a network of affine layers l = 1..L (``Linear``, ``Conv2d``) and piecewise-linear maps
(``ReLU``, ``MaxPool2d``, ``Flatten``) is multilinear in the layers' parameters theta_l. With a_(l-1) the input of
layer l, s_l its output (pre-activation), U_l[b, j, p] the unfolded input (patch j at position p; one position for
``Linear``), d_l(k)[b] = dz_bk / ds_l(b) the backpropagated logit unit vectors and, for the mean cross-entropy,
g_bk = (p_bk - [y_b = k]) / B and d_l^g = sum_k g_bk d_l(k):

* the logit Jacobian of layer l's weights and bias (Gauss-Newton part, sum_b J_b^T A_b J_b as in
  :func:`chaosnb.piecewise_linear.gauss_newton_block`)

      dz_bk / dW_l[c, j] = sum_p d_l(k)[b, c, p] U_l[b, j, p],        dz_bk / db_l[c] = sum_p d_l(k)[b, c, p];

* the residual R = sum_bk g_bk d^2 z_bk / d theta^2: zero within each layer (z is affine in theta_l), and for
  l < m (d_m^g does not depend on theta_l; U_m depends on it linearly, through the forward tangent U_m-dot)

      R[theta_l(i), W_m[c, j]] = sum_b sum_p d_m^g[b, c, p] U_m-dot(i)[b, j, p],   R[theta_l(i), b_m] = 0,

  where U_m-dot(i) is the unfolded forward tangent of a_(m-1) in the direction e_i of theta_l (seeded at s_l,
  propagated with the activation pattern fixed).

Cost: one forward pass, C backward passes (the logit unit vectors, all samples at once), one vmapped forward-tangent
pass per layer over its parameters, and GEMM-shaped contractions, all in the working precision. For the paper's CNN
(1,158 parameters) that replaces the 574 Hessian-vector products of
:func:`chaosnb.piecewise_linear.piecewise_linear_hessian` (float64: 0.058 s against 0.59 s at one thread). Ties in
``MaxPool2d`` and exact zeros of ``ReLU`` inputs (measure zero) are where the identity, like every Hessian of these
networks, is one-sided.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jvp, vjp, vmap

from chaosnb.piecewise_linear import PIECEWISE_LINEAR, gauss_newton_block, logit_derivatives


def affine_indices(module: nn.Module) -> list[int] | None:
    """Positions of the affine layers in ``module`` when the closed form applies: an ``nn.Sequential`` of
    ``Linear`` and ``Conv2d`` (groups 1, zero padding given as numbers) layers and the piecewise-linear maps of
    ``chaosnb.piecewise_linear.PIECEWISE_LINEAR``, with at least one affine layer; None otherwise."""
    if not isinstance(module, nn.Sequential):
        return None
    indices = []
    for i, child in enumerate(module):
        if isinstance(child, nn.Conv2d):
            if child.groups != 1 or child.padding_mode != "zeros" or isinstance(child.padding, str):
                return None
            indices.append(i)
        elif isinstance(child, nn.Linear):
            indices.append(i)
        elif not isinstance(child, PIECEWISE_LINEAR):
            return None
    return indices or None


class _Layer:
    """One affine layer: its module, the flat offsets of its weight and bias, and its affine map and unfolding."""

    def __init__(self, flat, index: int, module: nn.Module, theta: torch.Tensor) -> None:
        self.index, self.module = index, module
        specs = {s.name: s for s in flat.specs}
        w = specs[f"{index}.weight"]
        self.w_offset, self.w_numel = w.offset, w.numel
        self.weight = theta[w.offset:w.offset + w.numel].view(w.shape)
        b = specs.get(f"{index}.bias")
        self.b_offset = b.offset if b is not None else None
        self.bias = theta[b.offset:b.offset + b.numel].view(b.shape) if b is not None else None
        self.out = int(w.shape[0])
        self.size = w.numel + (b.numel if b is not None else 0)
        self.offset = w.offset if b is None else min(w.offset, b.offset)

    def apply(self, a: torch.Tensor) -> torch.Tensor:
        m = self.module
        if isinstance(m, nn.Conv2d):
            return F.conv2d(a, self.weight, self.bias, m.stride, m.padding, m.dilation)
        return F.linear(a, self.weight, self.bias)

    def unfold(self, a: torch.Tensor) -> torch.Tensor:
        """U[b, j, p] of the input ``a`` (batch first): conv patches, or the Linear's input rows by position."""
        m = self.module
        if isinstance(m, nn.Conv2d):
            return F.unfold(a, m.kernel_size, m.dilation, m.padding, m.stride)
        return a.reshape(a.shape[0], -1, a.shape[-1]).transpose(1, 2)

    def positions(self, s: torch.Tensor) -> torch.Tensor:
        """An output-shaped tensor (batch first) as (batch, out, positions)."""
        if isinstance(self.module, nn.Conv2d):
            return s.reshape(s.shape[0], self.out, -1)
        return s.reshape(s.shape[0], -1, self.out).transpose(1, 2)

    def seeds(self, u: torch.Tensor) -> torch.Tensor:
        """Forward tangents of s_l in the directions e_i of the layer's parameters (flat order: weight, bias),
        shape (size, batch, out, positions), from the unfolded input u (batch, j, positions)."""
        batch, j, pos = u.shape
        rows = torch.zeros(self.size, batch, self.out, pos, dtype=u.dtype, device=u.device)
        w = torch.arange(self.w_numel, device=u.device)
        wrow = w + (self.w_offset - self.offset)
        rows[wrow, :, w // j, :] = u.permute(1, 0, 2).repeat(self.out, 1, 1)
        if self.bias is not None:
            c = torch.arange(self.out, device=u.device)
            rows[c + (self.b_offset - self.offset), :, c, :] = 1.0
        return rows

    def to_output(self, rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`positions` for a leading direction axis: (dirs, batch, out, pos) -> (dirs, *like)."""
        if isinstance(self.module, nn.Conv2d):
            return rows.reshape(rows.shape[0], *like.shape)
        return rows.transpose(2, 3).reshape(rows.shape[0], *like.shape)

    def jacobian(self, d: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """(batch, classes, size) logit Jacobian of the layer's parameters from d (classes, batch, out, pos)."""
        jw = torch.einsum("kbcp,bjp->bkcj", d, u).reshape(u.shape[0], d.shape[0], -1)
        if self.bias is None:
            return jw
        jb = d.sum(-1).transpose(0, 1)  # (batch, classes, out)
        first, second = (jw, jb) if self.w_offset < self.b_offset else (jb, jw)
        return torch.cat([first, second], dim=-1)


def _segments(module: nn.Sequential, indices: Sequence[int]) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """The piecewise-linear maps before the first affine layer, between consecutive ones, and after the last."""
    children = list(module)
    bounds = [-1, *indices, len(children)]

    def chain(lo: int, hi: int) -> Callable[[torch.Tensor], torch.Tensor]:
        maps = children[lo + 1:hi]

        def apply(a: torch.Tensor) -> torch.Tensor:
            for m in maps:
                a = m(a)
            return a

        return apply

    return [chain(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


def _inputs_after(layers: Sequence[_Layer], maps: Sequence[Callable[[torch.Tensor], torch.Tensor]], li: int
                  ) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    """s_l -> (a_l, ..., a_(L-1)): the inputs of the affine layers after layer ``li``, from its output."""
    def later_inputs(s: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out, later = maps[li + 1](s), []
        for m in range(li + 1, len(layers)):
            later.append(out)
            out = maps[m + 1](layers[m].apply(out))
        return tuple(later)

    return later_inputs


def _forward_tangents(fn: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], point: torch.Tensor,
                      seeds: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The forward tangents of ``fn`` at ``point`` in each direction of ``seeds`` (leading axis), vmapped."""
    return vmap(lambda t: jvp(fn, (point,), (t,))[1])(seeds)


def closed_form_hessian(flat, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The full (N, N) Hessian of the mean cross-entropy of a piecewise-linear ``flat`` on the batch (x, y) at
    ``theta``, in theta's dtype, by the closed form of the module docstring. Raises ValueError for a network
    outside :func:`affine_indices` (use :func:`chaosnb.piecewise_linear.piecewise_linear_hessian` or
    :func:`chaosnb.curvature.dense_hessian`)."""
    indices = affine_indices(flat.module)
    if indices is None:
        raise ValueError("closed_form_hessian needs an nn.Sequential of Linear/Conv2d (groups 1, zero padding) layers "
                         "and ReLU/MaxPool2d/Flatten maps; use curvature.dense_hessian for other networks")
    theta = theta.detach()
    x = x.to(theta.dtype)
    children = list(flat.module)
    layers = [_Layer(flat, i, children[i], theta) for i in indices]
    maps = _segments(flat.module, indices)
    n_layers = len(layers)

    # forward: each affine layer's input a_(l-1) and output s_l
    inputs, outputs = [], []
    a = maps[0](x)
    for i, layer in enumerate(layers):
        inputs.append(a)
        s = layer.apply(a)
        outputs.append(s)
        a = maps[i + 1](s)
    z = a
    classes = z.shape[-1]

    def logits_from(eps: tuple[torch.Tensor, ...]) -> torch.Tensor:  # z with s_l + eps_l (pattern of theta)
        out = maps[0](x)
        for i, layer in enumerate(layers):
            out = maps[i + 1](layer.apply(out) + eps[i])
        return out

    # backward: d_l(k) for every class k, all samples at once (the samples do not interact)
    _, pullback = vjp(logits_from, tuple(torch.zeros_like(s) for s in outputs))
    units = torch.eye(classes, dtype=z.dtype, device=z.device)[:, None, :].expand(classes, *z.shape)
    (deltas,) = vmap(pullback)(units.contiguous())  # tuple over layers of (classes, *s_l.shape)
    d = [layer.positions(dl.reshape(-1, *dl.shape[2:])).reshape(classes, *layer.positions(s).shape)
         for layer, dl, s in zip(layers, deltas, outputs, strict=True)]
    u = [layer.unfold(inp) for layer, inp in zip(layers, inputs, strict=True)]

    p, g = logit_derivatives(z, y)
    jac = torch.zeros(z.shape[0], classes, theta.numel(), dtype=theta.dtype, device=theta.device)
    for layer, dl, ul in zip(layers, d, u, strict=True):
        jac[:, :, layer.offset:layer.offset + layer.size] = layer.jacobian(dl, ul)
    h = gauss_newton_block(jac, p)
    dg = [torch.einsum("bk,kbcp->bcp", g, dl) for dl in d]

    # residual: forward tangents from each layer l, contracted with d_m^g of every later layer m
    for li in range(n_layers - 1):
        layer = layers[li]
        seeds = layer.to_output(layer.seeds(u[li]), outputs[li])
        tangents = _forward_tangents(_inputs_after(layers, maps, li), outputs[li], seeds)
        rows = slice(layer.offset, layer.offset + layer.size)
        for m, tangent in zip(range(li + 1, n_layers), tangents, strict=True):
            later = layers[m]
            ut = later.unfold(tangent.reshape(-1, *tangent.shape[2:]))
            ut = ut.reshape(layer.size, -1, *ut.shape[1:])  # (dirs, batch, j, pos)
            block = torch.einsum("dbjp,bcp->dcj", ut, dg[m]).reshape(layer.size, -1)
            cols = slice(later.w_offset, later.w_offset + later.w_numel)
            h[rows, cols] += block
            h[cols, rows] += block.T
    return 0.5 * (h + h.T)
