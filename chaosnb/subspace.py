"""Subspace similarity of Theorem A.11 and the random baseline of equation (65) (appendix C.2).

For subspaces V, W of R^N with orthonormal column bases V (N x a) and W (N x b), the paper's
*modified subspace similarity* is

    overlap(V, W) = Tr(P_V P_W) / sqrt(Tr P_V Tr P_W) * sqrt(d_max / d_min) = ||V^T W||_F^2 / d_min,

with P_V = V V^T, d_min = min(a, b), d_max = max(a, b). Equivalently it is the mean of cos^2 of the
d_min principal angles between V and W, hence 0 for V orthogonal to W, 1 for nested subspaces, and in
[0, 1] always (Theorem A.11).

Empty subspaces (a = 0 or b = 0): the ratio is 0/0, so every function here returns ``nan`` for them
(a gap in a plot rather than a crash when a chaotic subspace happens to be empty).

Random baseline: for independent uniformly distributed subspaces of dimensions a, b in R^n,
E[P_V] = (a/n) I and E[P_W] = (b/n) I, so E||V^T W||_F^2 = E Tr(P_V P_W) = a b / n and
E overlap = max(a, b) / n. Equation (65) averages this over runs i: mean_i max(d_(0,i), d_(t,i)) / n_i.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import scipy.linalg

ArrayLike = np.ndarray | list | tuple | float | int


def _as_basis(M, name: str) -> np.ndarray:
    arr = np.asarray(M.detach().cpu() if hasattr(M, "detach") else M, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be an (N, k) matrix of column vectors, got shape {arr.shape}")
    return arr


def orthonormal_basis(M, rtol: float | None = None) -> np.ndarray:
    """Orthonormal basis (N, rank) of the column span of M (via SVD, ``scipy.linalg.orth``)."""
    return scipy.linalg.orth(_as_basis(M, "M"), rcond=rtol)


def _prepare(V, W, orthonormalize: bool, check: bool, atol: float) -> tuple[np.ndarray, np.ndarray]:
    V, W = _as_basis(V, "V"), _as_basis(W, "W")
    if V.shape[0] != W.shape[0]:
        raise ValueError(f"V and W live in different spaces: N = {V.shape[0]} vs N = {W.shape[0]}")
    if orthonormalize:
        V = orthonormal_basis(V) if V.shape[1] else V
        W = orthonormal_basis(W) if W.shape[1] else W
    elif check:
        for name, M in (("V", V), ("W", W)):
            if not np.allclose(M.T @ M, np.eye(M.shape[1]), atol=atol):
                raise ValueError(f"{name} does not have orthonormal columns; pass orthonormalize=True")
    return V, W


def overlap(V, W, orthonormalize: bool = False, check: bool = False, atol: float = 1e-8) -> float:
    """Modified subspace similarity of Theorem A.11: ||V^T W||_F^2 / min(dim V, dim W).

    ``V`` (N, a) and ``W`` (N, b) are orthonormal column bases (numpy arrays or torch tensors). With
    ``orthonormalize=True`` arbitrary spanning sets are accepted (an SVD basis of their span is used, so
    rank-deficient inputs are handled); with ``check=True`` orthonormality is verified instead (costs two
    Gram matrices). Returns ``nan`` if either subspace is empty. Raises ``ValueError`` if N differs.
    """
    V, W = _prepare(V, W, orthonormalize, check, atol)
    d_min = min(V.shape[1], W.shape[1])
    if d_min == 0:
        return float("nan")
    return float(np.sum((V.T @ W) ** 2) / d_min)


def overlap_projectors(V, W, orthonormalize: bool = False) -> float:
    """Theorem A.11's first form, computed literally with the N x N projectors P_V = V V^T, P_W = W W^T:
    Tr(P_V P_W) / sqrt(Tr P_V Tr P_W) * sqrt(d_max / d_min). A reference for tests (O(N^3) work)."""
    V, W = _prepare(V, W, orthonormalize, False, 0.0)
    a, b = V.shape[1], W.shape[1]
    if min(a, b) == 0:
        return float("nan")
    P_V, P_W = V @ V.T, W @ W.T
    similarity = np.trace(P_V @ P_W) / np.sqrt(np.trace(P_V) * np.trace(P_W))
    return float(similarity * np.sqrt(max(a, b) / min(a, b)))


def overlap_principal_angles(V, W) -> float:
    """Mean of cos^2 over the min(a, b) principal angles (``scipy.linalg.subspace_angles``); equals
    :func:`overlap` because the singular values of V^T W are the cosines of the principal angles."""
    V, W = _prepare(V, W, False, False, 0.0)
    if min(V.shape[1], W.shape[1]) == 0:
        return float("nan")
    return float(np.mean(np.cos(scipy.linalg.subspace_angles(V, W)) ** 2))


def random_overlap_expectation(a: ArrayLike, b: ArrayLike, n: ArrayLike) -> np.ndarray | float:
    """E[overlap] of independent uniformly random subspaces of dims a, b in R^n: (a b / n) / min(a, b)
    = max(a, b) / n. Broadcasts over arrays; ``nan`` where a or b is 0."""
    a, b, n = (np.asarray(v, dtype=np.float64) for v in (a, b, n))
    if np.any(a < 0) or np.any(b < 0) or np.any(a > n) or np.any(b > n):
        raise ValueError("subspace dimensions must lie in [0, n]")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where((a > 0) & (b > 0), np.maximum(a, b) / n, np.nan)
    return float(out) if out.ndim == 0 else out


def random_orthonormal_basis(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Orthonormal basis (n, k) of a uniformly random k-dimensional subspace (QR of a Gaussian matrix)."""
    q, _ = np.linalg.qr(rng.standard_normal((n, k)))
    return q


class MonteCarloEstimate(NamedTuple):
    mean: float
    sem: float  # standard error of the mean
    samples: np.ndarray


def random_overlap_monte_carlo(a: int, b: int, n: int, samples: int = 1000,
                               seed: int = 0) -> MonteCarloEstimate:
    """Monte Carlo estimate of E[overlap] for random subspaces of dims a, b in R^n (random QR bases)."""
    if min(a, b) == 0:
        return MonteCarloEstimate(float("nan"), float("nan"), np.full(samples, np.nan))
    rng = np.random.default_rng(seed)
    vals = np.array([overlap(random_orthonormal_basis(n, a, rng), random_orthonormal_basis(n, b, rng))
                     for _ in range(samples)])
    sem = float(vals.std(ddof=1) / np.sqrt(samples)) if samples > 1 else float("nan")
    return MonteCarloEstimate(float(vals.mean()), sem, vals)


def random_baseline(dims0: ArrayLike, dims_t: ArrayLike, n: ArrayLike) -> np.ndarray | float:
    """Equation (65): (1/R) sum_i E[overlap(V_(0,i), V_(t,i))] for random subspaces of the runs' dimensions.

    Axis 0 indexes runs i = 1..R. ``dims0`` has shape (R,) (the fixed subspace at t_0), ``dims_t`` shape (R,)
    or (R, T) (dimensions over time), ``n`` is the ambient dimension, a scalar or per run (R,) (runs of the
    MLP and the CNN have different N). Returns a float, or shape (T,). Runs with an empty subspace at some t
    are left out of that mean (``nan`` if all are empty).
    """
    d0, dt, nn_ = (np.asarray(v, dtype=np.float64) for v in (dims0, dims_t, n))
    if dt.ndim == 0 or d0.ndim > 1 or d0.shape[0] != dt.shape[0]:
        raise ValueError("dims0 must have shape (R,) and dims_t shape (R,) or (R, T)")
    extra = (1,) * (dt.ndim - 1)
    d0 = d0.reshape(d0.shape + extra)
    if nn_.ndim == 1:
        nn_ = nn_.reshape(nn_.shape + extra)
    expected = np.asarray(random_overlap_expectation(d0, dt, nn_))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = np.nanmean(expected, axis=0)
    return float(out) if out.ndim == 0 else out
