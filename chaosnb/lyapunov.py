"""Lyapunov exponents of SGD training and of reference maps.

* Local exponents (Theorem A.5): LLE_i = log|1 - lr * lambda_i| for the Hessian eigenvalues lambda_i.
* The tangent map Y_t = d theta_t / d theta_0 of SGD (Theorem A.1, Y <- (I - lr H_t) Y) and of SGD with
  momentum (Theorem A.3, as the running sum G <- beta G + H_t Y_t; Y <- Y - lr G), kept as an exactly
  rescaled float64 matrix times 2**k so that long horizons neither overflow nor underflow.
* Finite-time exponents as the paper defines them: L_t = Y_t^T Y_t, exponents (1/(2t)) log eig(L_t)
  = (1/t) log sigma_i(Y_t), with the chaotic subspace spanned by the eigenvectors of L_t with eigenvalue > 1.
  Early in training (few low-rank steps) Y_t - I has low rank and an exact structured path replaces the
  N x N SVD by one of an N x m matrix (see :func:`finite_time_lyapunov`).
* Theorem A.6's upper bound on the maximal exponent (running mean of the per-step maximal LLE), the
  determinant sum rule sum_i lambda_i(t) = (1/t) sum_s log|det J_s|, and the Benettin/QR algorithm for any
  map given its Jacobians (with the Henon and logistic maps as known references).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from chaosnb.curvature import Spectrum

EPS64 = torch.finfo(torch.float64).eps
LN2 = math.log(2.0)
LYAPUNOV_METHODS = ("auto", "full", "structured")
STRUCTURED_OVERSAMPLING = 10
"""Extra Gaussian probes beyond the rank bound in the structured path's range finder."""
STRUCTURED_MAX_LOG2_SCALE = 900
"""The structured path forms the TRUE Y_t = Y_scaled * 2**k; only for |k| up to this (no overflow)."""
_STRUCTURED_SEED = 20240917

HessianLike = torch.Tensor | Spectrum | tuple[torch.Tensor, torch.Tensor]
"""A Hessian (or CGD's projected P H): a dense symmetric N x N matrix, a :class:`Spectrum`, or a pair
(eigenvalues (r,), eigenvectors (N, r) with orthonormal columns) meaning H = V diag(lam) V^T."""


# ----------------------------------------------------------------------------------------------------------
# Local exponents (Theorem A.5) and the Theorem A.6 bound
# ----------------------------------------------------------------------------------------------------------

def local_lyapunov_exponents(eigenvalues: torch.Tensor | np.ndarray | Sequence[float], lr: float
                             ) -> torch.Tensor:
    """Theorem A.5: LLE_i = log|1 - lr * lambda_i| (float64, same order as ``eigenvalues``).

    Where ``lr * lambda_i`` is exactly 1 (the edge case lambda = 1/lr, maximal contraction) the result is
    -inf, the first of the two conventions the appendix allows. Positive entries are locally chaotic
    directions: lambda < 0 or lambda > 2/lr. Zero eigenvalues give exactly 0 (edge-chaotic).
    """
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64)
    return torch.log(torch.abs(1.0 - lr * lam))


def max_local_exponent(h: HessianLike, lr: float) -> float:
    """The per-step maximal LLE lambda_1^(s) = log ||I - lr H||_2 = max_i log|1 - lr lambda_i| (Theorem A.6).

    For a low-rank pair or :class:`Spectrum` with r < N eigenpairs the complement (H = 0 there, LLE 0)
    takes part in the maximum.
    """
    lam, n = _eigenvalues(h)
    lle = local_lyapunov_exponents(lam, lr)
    top = float(lle.max()) if lle.numel() else -math.inf
    return max(top, 0.0) if lam.numel() < n else top


def mlce_upper_bound(max_local_exponents: torch.Tensor | np.ndarray | Sequence[float]) -> torch.Tensor:
    """Theorem A.6: the running mean (1/t) sum_{s<=t} lambda_1^(s) of the per-step maximal LLE, for t = 1..T.

    For SGD without momentum, (1/t) log ||Y_t||_2 <= this bound at EVERY finite t (submultiplicativity of the
    spectral norm), not only in the limit. It does not bound SGD with momentum (Y_t is then not a product
    of the factors I - lr H_s).
    """
    x = torch.as_tensor(max_local_exponents, dtype=torch.float64).reshape(-1)
    return torch.cumsum(x, 0) / torch.arange(1, x.numel() + 1, dtype=torch.float64)


def log_abs_det_jacobian(h: HessianLike, lr: float) -> float:
    """log|det(I - lr H)| = sum_i log|1 - lr lambda_i| (implicit zero eigenvalues contribute 0).

    For a pair (lam_K, V_K) this is the CGD Jacobian I - lr V_K diag(lam_K) V_K^T (V_K orthonormal).
    """
    lam, _ = _eigenvalues(h)
    return float(local_lyapunov_exponents(lam, lr).sum())


def log_det_sum(hessians: Iterable[HessianLike], lr: float | Sequence[float]) -> float:
    """Sum rule: (1/t) sum_{s<t} log|det J_s| with J_s = I - lr H_s (plain SGD).

    Equals the sum of all finite-time exponents of the tangent map (log|det Y_t| / t), as long as all of them
    are resolved. ``lr`` is one learning rate or one per step.
    """
    total, t = 0.0, 0
    for s, h in enumerate(hessians):
        step_lr = lr if isinstance(lr, int | float) else lr[s]
        total += log_abs_det_jacobian(h, float(step_lr))
        t += 1
    if t == 0:
        raise ValueError("log_det_sum needs at least one Hessian")
    return total / t


def _eigenvalues(h: HessianLike) -> tuple[torch.Tensor, int]:
    """(eigenvalues, N) of a Hessian-like input (dense: ``eigvalsh`` in float64)."""
    if isinstance(h, torch.Tensor):
        mat = _dense(h, h.shape[0] if h.ndim == 2 else -1)
        return torch.linalg.eigvalsh(mat), mat.shape[0]
    lam, vecs = _pair(h, None)
    return lam, vecs.shape[0]


def _dense(h: torch.Tensor, n: int) -> torch.Tensor:
    if h.ndim != 2 or h.shape != (n, n):
        raise ValueError(f"a dense Hessian must have shape ({n}, {n}), got {tuple(h.shape)}")
    return h.detach().to(torch.float64)


def _pair(h: Spectrum | tuple[torch.Tensor, torch.Tensor], n: int | None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(h, Spectrum):
        lam, vecs = h.eigenvalues, h.eigenvectors
        if vecs.shape[0] != h.num_params:
            raise ValueError("Spectrum eigenvectors do not have num_params rows")
    elif isinstance(h, tuple | list) and len(h) == 2:
        lam, vecs = h
    else:
        raise TypeError("h must be a dense (N, N) tensor, a Spectrum or an (eigenvalues, eigenvectors) pair")
    lam = torch.as_tensor(lam).detach().to(torch.float64).reshape(-1)
    vecs = torch.as_tensor(vecs).detach().to(torch.float64)
    if vecs.ndim != 2 or vecs.shape[1] != lam.numel() or (n is not None and vecs.shape[0] != n):
        raise ValueError(f"eigenvectors must have shape ({n or 'N'}, {lam.numel()}), got {tuple(vecs.shape)}")
    return lam, vecs


# ----------------------------------------------------------------------------------------------------------
# Tangent map (Theorems A.1 and A.3)
# ----------------------------------------------------------------------------------------------------------

def _ldexp(x: torch.Tensor, k: int) -> torch.Tensor:
    """x * 2**k, exact (powers of two), in chunks so that 2**k itself never overflows."""
    while k:
        step = max(-1000, min(1000, k))
        x = x * 2.0**step
        k -= step
    return x


class TangentMap:
    """Y_t = d theta_t / d theta_0 (N x N, float64) along an SGD trajectory, Y_0 = I.

    Plain SGD (Theorem A.1): Y <- (I - lr H_t) Y. With momentum beta (Theorem A.3, torch.optim.SGD with
    dampening 0: buf <- beta buf + g; theta <- theta - lr buf, buf starting at 0): G <- beta G + H_t Y;
    Y <- Y - lr G. Note that this Y is d theta_t / d theta_0 with the velocity started at 0, i.e. the
    theta-block of the tangent map of the 2N-dimensional (theta, buf) system.

    Y is stored as ``Y_scaled * 2**k``: after every step Y_scaled (and G) are multiplied by the power of two
    that brings max|Y_scaled| into [0.5, 1). Powers of two are exact, so the scaled recursion is bit-for-bit
    the unscaled one, but it never overflows; ``log_scale = k log 2``.

    ``update_rank`` is an upper bound on rank(Y_t - I): every low-rank step adds the number of (nonzero)
    eigenpairs it used, a dense step sets it to N. (Plain SGD: Y_t - I is a sum of products that start and
    end with some H_s; momentum: Y_t - I = -lr sum_s G_s and G_s's range and row space lie in the span of
    the V's used so far. Either way range and row space of Y_t - I lie in that span.) While it is small,
    :func:`finite_time_lyapunov` takes the exact structured path.
    """

    def __init__(self, num_params: int, lr: float, momentum: float = 0.0,
                 device: torch.device | str | None = None) -> None:
        if num_params <= 0:
            raise ValueError("num_params must be positive")
        if not 0.0 <= momentum < 1.0:
            raise ValueError("momentum must be in [0, 1)")
        self.num_params = int(num_params)
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.t = 0
        self._log2_scale = 0
        self._update_rank = 0
        self._y = torch.eye(self.num_params, dtype=torch.float64, device=device)
        self._g = torch.zeros_like(self._y) if self.momentum > 0.0 else None

    @property
    def log_scale(self) -> float:
        """log of the scalar factor: Y = Y_scaled * exp(log_scale)."""
        return self._log2_scale * LN2

    @property
    def update_rank(self) -> int:
        """Upper bound on rank(Y_t - I) (N after any dense step; see the class docstring)."""
        return self._update_rank

    def _hessian_times(self, h: HessianLike, y: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(H y, rank bound of H): N for a dense H, the number of nonzero eigenvalues for a pair."""
        if isinstance(h, torch.Tensor):
            return _dense(h, self.num_params).to(y.device) @ y, self.num_params
        lam, vecs = _pair(h, self.num_params)
        lam, vecs = lam.to(y.device), vecs.to(y.device)
        return vecs @ (lam[:, None] * (vecs.T @ y)), int((lam != 0.0).sum())

    def step(self, h: HessianLike, lr: float | None = None) -> None:
        """One training step with Hessian (or CGD's P H) ``h``; ``lr`` overrides the default for this step.

        Dense h: Y <- Y - lr H Y. Pair/Spectrum (lam, V): Y <- Y - lr V (lam[:, None] * (V^T Y)), never
        forming I - lr H (for a low-rank pair the complement of span(V) is left unchanged, J = I there).
        """
        lr = self.lr if lr is None else float(lr)
        hy, rank = self._hessian_times(h, self._y)
        self._update_rank = min(self.num_params, self._update_rank + rank)
        if self._g is None:
            self._y = self._y - lr * hy
        else:
            self._g = self.momentum * self._g + hy
            self._y = self._y - lr * self._g
        self.t += 1
        self._rescale()

    def _rescale(self) -> None:
        m = self._y.abs().max()
        if self._g is not None:
            m = torch.maximum(m, self._g.abs().max())
        if not bool(torch.isfinite(m)):
            raise FloatingPointError("tangent map became non-finite within one step (|lr H| too large?)")
        if float(m) == 0.0:
            return
        e = int(torch.frexp(m)[1])
        if e:
            self._y = _ldexp(self._y, -e)
            if self._g is not None:
                self._g = _ldexp(self._g, -e)
            self._log2_scale += e

    def matrix(self) -> torch.Tensor:
        """The true Y_t = Y_scaled * 2**k. May overflow to inf (or underflow to 0) over long horizons."""
        return _ldexp(self._y, self._log2_scale)

    def scaled(self) -> tuple[torch.Tensor, float]:
        """(Y_scaled, log_scale) with Y_t = Y_scaled * exp(log_scale); max|Y_scaled| in [0.5, 1)."""
        return self._y.clone(), self.log_scale

    def lyapunov(self, tol: float = 0.0, method: str = "auto") -> FiniteTimeLyapunov:
        """The finite-time exponents of Y_t (see :func:`finite_time_lyapunov`)."""
        return finite_time_lyapunov(self, tol, method)

    def structured_applicable(self, strict: bool = True) -> bool:
        """Whether the structured (low-rank Y_t - I) path can be used: the true Y_t is representable
        (|log2 scale| <= STRUCTURED_MAX_LOG2_SCALE) and, if ``strict`` (what ``method="auto"`` asks), it pays
        off: 2 (update_rank + STRUCTURED_OVERSAMPLING) < N / 2."""
        if abs(self._log2_scale) > STRUCTURED_MAX_LOG2_SCALE:
            return False
        return not strict or 2 * (self._update_rank + STRUCTURED_OVERSAMPLING) < self.num_params / 2

    def state_dict(self) -> dict:
        """Everything needed to continue: plain numbers and tensors (clones)."""
        return {"num_params": self.num_params, "lr": self.lr, "momentum": self.momentum, "t": self.t,
                "log2_scale": self._log2_scale, "update_rank": self._update_rank, "y": self._y.clone(),
                "g": None if self._g is None else self._g.clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` (the shapes and the presence of momentum must agree). A state without
        ``update_rank`` (older checkpoints) gets the trivial bound N: always the full SVD."""
        if int(state["num_params"]) != self.num_params:
            raise ValueError(f"state is for {state['num_params']} parameters, not {self.num_params}")
        if (state["g"] is None) != (self._g is None):
            raise ValueError("state and tangent map disagree on momentum")
        device = self._y.device
        self.lr, self.momentum = float(state["lr"]), float(state["momentum"])
        self.t, self._log2_scale = int(state["t"]), int(state["log2_scale"])
        self._update_rank = min(self.num_params, int(state.get("update_rank", self.num_params)))
        self._y = state["y"].to(device=device, dtype=torch.float64).clone()
        self._g = None if state["g"] is None else state["g"].to(device=device, dtype=torch.float64).clone()


# ----------------------------------------------------------------------------------------------------------
# Finite-time Lyapunov exponents
# ----------------------------------------------------------------------------------------------------------

@dataclass
class FiniteTimeLyapunov:
    """Finite-time Lyapunov spectrum of Y_t: exponents (1/(2t)) log eig(Y_t^T Y_t) = (1/t) log sigma_i(Y_t).

    ``exponents`` are descending (float64); ``vectors`` holds the eigenvectors of L_t = Y_t^T Y_t (right
    singular vectors of Y_t) as columns in the same order. Singular values below the method's resolution
    cannot be resolved in float64: their exponents are set to -inf (like the paper's "-inf" minimal LCEs) and
    count as non-chaotic; ``resolution`` is the exponent of that threshold (every finite exponent is >= it,
    every unresolved one is < it).

    Classification (safe at any ``tol``, including the paper's tol = 0): exponent i is chaotic iff it exceeds
    tol by more than its own float64 error estimate, lambda_i - err_i > tol. A direction that no step touched
    has sigma = 1 +- a few eps, i.e. lambda = 0 +- err: it never counts as chaotic. ``chaotic_dim_certain`` is
    True only if no exponent could lie on the other side of tol: every non-chaotic finite exponent has
    lambda_i + err_i <= tol and no unresolved one can exceed tol (resolution <= tol). ``method`` says how it
    was computed: "full" (SVD of Y_t), "structured" (low-rank Y_t - I, see :func:`finite_time_lyapunov`).
    ``errors`` (optional) overrides the default first-order error estimate of the full SVD.
    """

    exponents: torch.Tensor
    vectors: torch.Tensor
    t: int
    resolution: float
    tol: float = 0.0
    method: str = "full"
    errors: torch.Tensor | None = None

    @property
    def resolved(self) -> torch.Tensor:
        """Boolean mask of resolved (finite) exponents."""
        return torch.isfinite(self.exponents)

    @property
    def num_unresolved(self) -> int:
        return int((~self.resolved).sum())

    @property
    def max_exponent(self) -> float:
        """The maximal finite-time exponent (1/t) log ||Y_t||_2."""
        return float(self.exponents[0])

    @property
    def min_exponent(self) -> float:
        """The smallest RESOLVED exponent (see ``num_unresolved`` for the -inf ones); -inf if none is."""
        finite = self.exponents[self.resolved]
        return float(finite[-1]) if finite.numel() else -math.inf

    @property
    def chaotic_mask(self) -> torch.Tensor:
        """lambda_i - err_i > tol: chaotic beyond the exponent's own rounding error (unresolved: never)."""
        return (self.exponents - self.error_estimate) > self.tol

    @property
    def uncertain_mask(self) -> torch.Tensor:
        """Non-chaotic exponents whose error interval reaches above tol (lambda_i + err_i > tol), and the
        unresolved ones when the resolution lies above tol: these could be chaotic."""
        err = self.error_estimate
        finite = self.resolved
        upper = torch.where(finite, self.exponents + torch.where(finite, err, 0.0), self.resolution)
        return ~self.chaotic_mask & (upper > self.tol)

    @property
    def num_uncertain(self) -> int:
        """How many non-chaotic directions could be chaotic: chaotic_dim <= true dim <= chaotic_dim + this."""
        return int(self.uncertain_mask.sum())

    @property
    def chaotic_dim(self) -> int:
        return int(self.chaotic_mask.sum())

    @property
    def non_chaotic_dim(self) -> int:
        return int(self.exponents.numel()) - self.chaotic_dim

    @property
    def error_estimate(self) -> torch.Tensor:
        """Float64 error bound of each exponent (inf if unresolved). Default (full SVD): the SVD's absolute
        error N eps sigma_max in relative terms, log(1 + N eps sigma_max / sigma_i) / t; exponents close to
        ``resolution`` sit on the rounding-noise floor and are unreliable. ``errors`` overrides it."""
        if self.errors is not None:
            return self.errors
        gap = self.t * (self.exponents[0] - self.exponents)
        return torch.log1p(self.vectors.shape[0] * EPS64 * torch.exp(gap)) / self.t

    @property
    def exponent_sum(self) -> float:
        """Sum of all exponents = (1/t) log|det Y_t| (-inf if any is unresolved)."""
        return float(self.exponents.sum())

    @property
    def chaotic_dim_certain(self) -> bool:
        """Whether ``chaotic_dim`` is exact: no exponent within its error estimate of tol and no unresolved
        exponent that could exceed tol (``num_uncertain == 0``). Over long horizons on the full-SVD path the
        resolution climbs above 0 (only ~(36 + ln N)/t below the top exponent is resolvable); then
        ``chaotic_dim`` is only a lower bound."""
        return self.num_uncertain == 0

    def chaotic_subspace(self) -> torch.Tensor:
        """Orthonormal basis (columns) of V_chaotic(t): eigenvectors of L_t with eigenvalue > 1."""
        return self.vectors[:, self.chaotic_mask]

    def non_chaotic_subspace(self) -> torch.Tensor:
        """Orthonormal basis (columns) of V_non-chaotic(t), the orthogonal complement of V_chaotic(t)."""
        return self.vectors[:, ~self.chaotic_mask]


def finite_time_exponents(y: torch.Tensor, t: int, log_scale: float = 0.0, tol: float = 0.0
                          ) -> FiniteTimeLyapunov:
    """Finite-time exponents of the tangent map Y_t = y * exp(log_scale) after t steps.

    Computed from the SVD of ``y`` (never forming Y^T Y, which would square the condition number) as
    (log sigma_i(y) + log_scale) / t.
    """
    if t <= 0:
        raise ValueError("finite-time exponents need t >= 1 steps")
    y = torch.as_tensor(y).detach().to(torch.float64)
    if y.ndim != 2:
        raise ValueError("y must be a matrix")
    if not bool(torch.isfinite(y).all()):
        raise ValueError("y has inf/nan entries; pass the scaled tangent map and its log_scale instead")
    _, s, vh = torch.linalg.svd(y, full_matrices=False)
    threshold = float(s[0]) * y.shape[1] * EPS64
    exponents = (torch.log(s) + log_scale) / t
    exponents[s < threshold] = -math.inf
    resolution = (math.log(threshold) + log_scale) / t if threshold > 0 else -math.inf
    return FiniteTimeLyapunov(exponents, vh.T.contiguous(), int(t), resolution, float(tol), "full")


def finite_time_lyapunov(tangent_map: TangentMap, tol: float = 0.0, method: str = "auto"
                         ) -> FiniteTimeLyapunov:
    """Finite-time exponents of a :class:`TangentMap` (no overflow at any horizon).

    ``method="full"``: SVD of the scaled N x N matrix (:func:`finite_time_exponents`). ``"structured"``: the
    exact low-rank path. A = Y_t - I has rank <= k = ``tangent_map.update_rank``; on the orthogonal complement
    of S = range(A) + range(A^T) both Y and Y^T act as the identity, so those directions are eigenvectors of
    L_t with eigenvalue 1 (exponent exactly 0, non-chaotic for any tol >= 0), S is invariant under L_t and the
    other singular values and vectors come from the SVD of the N x m matrix Y Q, Q an orthonormal basis of S.
    Q comes from a randomized range finder with the exact rank bound (Gaussian probes A Omega_1, A^T Omega_2
    of width k + STRUCTURED_OVERSAMPLING, fixed seed) and a rank-revealing SVD (singular values above
    N eps s_max); the complement's basis from a complete QR of Q, so ``vectors`` stays a full orthonormal
    N x N matrix in descending-exponent order. Cost ~ N^2 k instead of ~ N^3; the resolution / -inf rule is
    the full path's (sigma_max N eps). It needs the true Y_t (|log2 scale| <= STRUCTURED_MAX_LOG2_SCALE),
    else ValueError. ``"auto"`` (the default) takes it when also 2 (k + STRUCTURED_OVERSAMPLING) < N / 2,
    the full SVD otherwise; both agree up to rounding.
    """
    if method not in LYAPUNOV_METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods are: {', '.join(LYAPUNOV_METHODS)}")
    if tangent_map.t <= 0:
        raise ValueError("finite-time exponents need t >= 1 steps")
    if method == "structured" and not tangent_map.structured_applicable(strict=False):
        raise ValueError("the structured path needs |log2 scale| <= "
                         f"{STRUCTURED_MAX_LOG2_SCALE}, got {tangent_map._log2_scale}")
    if method == "structured" or (method == "auto" and tangent_map.structured_applicable()):
        return _structured_exponents(tangent_map, tol)
    y, log_scale = tangent_map.scaled()
    return finite_time_exponents(y, tangent_map.t, log_scale, tol)


def _structured_exponents(tangent_map: TangentMap, tol: float) -> FiniteTimeLyapunov:
    """The structured path of :func:`finite_time_lyapunov` (checks done by the caller)."""
    n, t = tangent_map.num_params, tangent_map.t
    y_scaled = tangent_map._y
    a = y_scaled * 2.0 ** tangent_map._log2_scale  # the true Y_t: exact, |log2 scale| <= 900
    a.diagonal().sub_(1.0)  # A = Y_t - I
    width = min(tangent_map.update_rank + STRUCTURED_OVERSAMPLING, n)
    gen = torch.Generator().manual_seed(_STRUCTURED_SEED)
    omega = torch.randn(n, 2 * width, generator=gen, dtype=torch.float64).to(a.device)
    probes = torch.cat([a @ omega[:, :width], a.T @ omega[:, width:]], dim=1)
    del omega
    u, sc, _ = torch.linalg.svd(probes, full_matrices=False)
    del probes
    m = int((sc > sc[0] * n * EPS64).sum())  # 0 when A = 0
    if m:
        basis, _ = torch.linalg.qr(u[:, :m], mode="complete")  # [Q, Q_perp], orthonormal N x N
    else:
        basis = torch.eye(n, dtype=torch.float64, device=a.device)
    del u
    q = basis[:, :m]
    _, s, wh = torch.linalg.svd(a @ q + q, full_matrices=False)  # Y Q = A Q + Q
    del a
    ones = torch.ones(n - m, dtype=torch.float64, device=s.device)
    above = int((s > 1.0).sum())  # s is descending: [s > 1, the exact ones, s <= 1]
    sigma = torch.cat([s[:above], ones, s[above:]])
    vectors = torch.cat([q @ wh[:above].T, basis[:, m:], q @ wh[above:].T], dim=1)
    threshold = float(sigma[0]) * n * EPS64
    exponents = torch.log(sigma) / t
    exponents[sigma < threshold] = -math.inf
    resolution = math.log(threshold) / t if threshold > 0 else -math.inf
    return FiniteTimeLyapunov(exponents, vectors, int(t), resolution, float(tol), "structured")


# ----------------------------------------------------------------------------------------------------------
# Benettin / QR algorithm for any map
# ----------------------------------------------------------------------------------------------------------

class DiscreteMap(NamedTuple):
    """A map x -> f(x), its Jacobian x -> Df(x) (numpy float64) and a default initial point."""

    f: Callable[[np.ndarray], np.ndarray]
    jac: Callable[[np.ndarray], np.ndarray]
    x0: np.ndarray


def henon_map(a: float = 1.4, b: float = 0.3) -> DiscreteMap:
    """Henon map (x, y) -> (1 - a x^2 + y, b x); at a=1.4, b=0.3 the exponents are ~0.4192 and ~-1.6232
    (their sum is log b exactly, since det Df = -b)."""

    def f(x: np.ndarray) -> np.ndarray:
        return np.array([1.0 - a * x[0] * x[0] + x[1], b * x[0]])

    def jac(x: np.ndarray) -> np.ndarray:
        return np.array([[-2.0 * a * x[0], 1.0], [b, 0.0]])

    return DiscreteMap(f, jac, np.array([0.1, 0.1]))


def logistic_map(r: float = 4.0) -> DiscreteMap:
    """Logistic map x -> r x (1 - x) (as a 1-vector); at r = 4 the exponent is ln 2."""

    def f(x: np.ndarray) -> np.ndarray:
        return np.array([r * x[0] * (1.0 - x[0])])

    def jac(x: np.ndarray) -> np.ndarray:
        return np.array([[r * (1.0 - 2.0 * x[0])]])

    return DiscreteMap(f, jac, np.array([0.1234]))


def _as_numpy(m: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(m, torch.Tensor):
        m = m.detach().cpu().numpy()
    return np.asarray(m, dtype=np.float64)


def qr_lyapunov_spectrum(jacobians: Iterable[torch.Tensor | np.ndarray] | None = None,
                         x0: np.ndarray | Sequence[float] | None = None, *,
                         f: Callable[[np.ndarray], np.ndarray] | None = None,
                         jac: Callable[[np.ndarray], np.ndarray] | None = None,
                         steps: int | None = None, transient: int = 0,
                         num_exponents: int | None = None) -> torch.Tensor:
    """Lyapunov spectrum by the Benettin/QR algorithm (descending, float64).

    Either ``jacobians`` (an iterable of the Jacobians J_0, J_1, ... along an orbit) or a map ``f`` with its
    Jacobian ``jac``, a start ``x0`` and a number of ``steps`` (J_s = jac(x_s), x_{s+1} = f(x_s)). Each step
    Q, R = qr(J Q) with diag(R) made positive; the exponents are the means of log|diag R| over the steps
    after the first ``transient`` ones (which still evolve x and Q). ``num_exponents`` k <= N tracks only the
    k leading exponents (Q of shape N x k).
    """
    if jacobians is None:
        if f is None or jac is None or x0 is None or steps is None:
            raise ValueError("pass either jacobians, or f, jac, x0 and steps")

        def orbit() -> Iterator[np.ndarray]:
            x = np.asarray(x0, dtype=np.float64).copy()
            for _ in range(transient + steps):
                yield jac(x)
                x = f(x)

        mats: Iterable[torch.Tensor | np.ndarray] = orbit()
    else:
        mats = jacobians
    q: np.ndarray | None = None
    acc: np.ndarray | None = None
    count = 0
    with np.errstate(divide="ignore"):
        for s, jm in enumerate(mats):
            j = _as_numpy(jm)
            if q is None:
                n = j.shape[0]
                k = n if num_exponents is None else int(num_exponents)
                q, acc = np.eye(n, k), np.zeros(k)
            q, r = np.linalg.qr(j @ q)
            d = np.diagonal(r).copy()
            q = q * np.where(d < 0.0, -1.0, 1.0)
            if s >= transient:
                acc += np.log(np.abs(d))
                count += 1
    if count == 0 or acc is None:
        raise ValueError("no Jacobians after the transient")
    return torch.from_numpy(np.sort(acc / count)[::-1].copy())
