"""The toy loss surface of Figure B.3.1: z(x, y) = -cos(x) - 0.05 y^2.

Gradient (sin x, -0.1 y); Hessian diag(cos x, -0.1), so the eigenvectors are the coordinate axes. Along x
the curvature is negative near the maximum x = pi, zero at the inflection x = pi/2 and positive near the
minimum x = 0; along y it is always negative (-0.1). Noisy gradient descent started near (pi, 0) first
descends along the negative x-curvature (stage 1), crosses the inflection (2), continues in positive
curvature (3) and, near the x-minimum (4, really a saddle), is taken over by the negative curvature along y.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

Y_COEF = 0.05
STAGES = {1: "near the maximum/saddle (negative x-curvature)", 2: "inflection point x = pi/2",
          3: "positive x-curvature", 4: "near the minimum along x (y takes over)"}


def toy_loss(x, y):
    """z(x, y) = -cos(x) - 0.05 y^2 for floats, numpy arrays or torch tensors (differentiable)."""
    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        return -torch.cos(torch.as_tensor(x)) - Y_COEF * torch.as_tensor(y) ** 2
    return -np.cos(x) - Y_COEF * np.asarray(y, dtype=np.float64) ** 2


def toy_gradient(x, y) -> np.ndarray:
    """(dz/dx, dz/dy) = (sin x, -0.1 y), stacked on the last axis: shape (..., 2)."""
    x, y = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    return np.stack([np.sin(x), -2.0 * Y_COEF * y], axis=-1)


def toy_hessian_eigenvalues(x, y) -> np.ndarray:
    """Eigenvalues of the diagonal Hessian, (cos x, -0.1) for the (x, y) axes: shape (..., 2)."""
    x, y = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    return np.stack([np.cos(x), np.full_like(y, -2.0 * Y_COEF)], axis=-1)


def _sign_word(v: np.ndarray, tol: float) -> np.ndarray:
    return np.where(v > tol, "positive", np.where(v < -tol, "negative", "zero"))


def curvature_region(x, y, tol: float = 1e-8):
    """Label '<x-sign>-<y-sign>' from the signs of the Hessian eigenvalues (|lambda| <= tol is 'zero'):
    'negative-negative' near x = pi, 'zero-negative' at x = pi/2, 'positive-negative' near x = 0.
    A str for scalar input, else an array of str."""
    ev = toy_hessian_eigenvalues(x, y)
    out = np.char.add(np.char.add(_sign_word(ev[..., 0], tol), "-"), _sign_word(ev[..., 1], tol))
    return str(out) if out.ndim == 0 else out


def curvature_stage(x, y, tol: float = 0.05, near_min: float = 0.5):
    """The paper's numbered stages of Figure B.3.1 along x (x taken modulo 2 pi):
    1 = negative x-curvature (cos x < -tol, around the maximum/saddle), 2 = inflection (|cos x| <= tol),
    3 = positive x-curvature, 4 = within ``near_min`` of the x-minimum (|x mod 2pi| <= near_min), where the
    x-gradient vanishes and the negative y-curvature takes over. An int for scalar input, else an array."""
    x, _ = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    c = np.cos(x)
    xw = np.abs(np.mod(x + math.pi, 2 * math.pi) - math.pi)
    out = np.where(c < -tol, 1, np.where(c <= tol, 2, np.where(xw <= near_min, 4, 3)))
    return int(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class ToyPath:
    """A noisy gradient-descent path on z; arrays have one row per position (steps + 1)."""

    positions: np.ndarray  # (steps + 1, 2)
    losses: np.ndarray  # (steps + 1,)
    gradients: np.ndarray  # (steps + 1, 2) exact gradients at the positions
    eigenvalues: np.ndarray  # (steps + 1, 2) Hessian eigenvalues (x-axis, y-axis)
    negative_fraction: np.ndarray  # (steps + 1,) fraction of negative Hessian eigenvalues (0, 0.5 or 1)
    negative_gradient_share: np.ndarray  # (steps + 1,) share of ||g||^2 in negative-curvature directions
    regions: np.ndarray  # (steps + 1,) curvature_region labels
    stages: np.ndarray  # (steps + 1,) curvature_stage numbers


def sgd_path(start: tuple[float, float] = (math.pi - 0.05, 0.05), lr: float = 0.1, steps: int = 400,
             noise_std: float = 0.0, seed: int = 0) -> ToyPath:
    """Noisy gradient descent p_{t+1} = p_t - lr (grad z(p_t) + noise_std * xi_t), xi_t ~ N(0, I_2).

    Because the Hessian is diagonal, ``negative_gradient_share`` = sum over negative eigenvalues of g_i^2
    / ||g||^2: ~1 at the start (everything is negative curvature), small while x descends through positive
    curvature, and back to ~1 once the y-direction (negative curvature) dominates near the x-minimum.
    """
    rng = np.random.default_rng(seed)
    pos = np.empty((steps + 1, 2))
    pos[0] = start
    for t in range(steps):
        g = toy_gradient(*pos[t])
        pos[t + 1] = pos[t] - lr * (g + noise_std * rng.standard_normal(2))
    x, y = pos[:, 0], pos[:, 1]
    grads = toy_gradient(x, y)
    ev = toy_hessian_eigenvalues(x, y)
    neg = ev < 0
    g2 = grads**2
    total = g2.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, (g2 * neg).sum(axis=1) / total, np.nan)
    return ToyPath(pos, toy_loss(x, y), grads, ev, neg.mean(axis=1), share,
                   np.asarray(curvature_region(x, y)), np.asarray(curvature_stage(x, y)))


def toy_phase_steps(path, high: float = 0.9, low: float = 0.1) -> dict:
    """Figure B.3.1's order of events along a :class:`chaosnb.toy.ToyPath`, from its arrays:

    * ``negative_first``: first step where the x-curvature is negative and >= ``high`` of ||g||^2 lies in
      negative-curvature directions (stage 1);
    * ``positive``: first later step where the x-curvature is positive and <= ``low`` of ||g||^2 lies in
      negative-curvature directions (the gradient lives in positive curvature, stage 3);
    * ``negative_again``: first step after that in stage 4 (near the x-minimum) with >= ``high`` of ||g||^2
      in negative curvature again (the y-direction has taken over).

    Values are step indices or None; ``ordered`` is True when all three exist (in this order by construction).
    """
    share = np.asarray(path.negative_gradient_share, dtype=np.float64)
    ev_x = np.asarray(path.eigenvalues)[:, 0]
    stages = np.asarray(path.stages)

    def first(mask, after):
        idx = np.nonzero(mask & (np.arange(mask.size) > after))[0]
        return int(idx[0]) if idx.size else None

    s1 = first((ev_x < 0) & (share >= high), -1)
    s3 = first((ev_x > 0) & (share <= low), s1) if s1 is not None else None
    s4 = first((stages == 4) & (share >= high), s3) if s3 is not None else None
    return {"negative_first": s1, "positive": s3, "negative_again": s4,
            "ordered": s1 is not None and s3 is not None and s4 is not None}
