"""Lyapunov exponents of SGD training and of reference maps.

* Local exponents (Theorem A.5): LLE_i = log|1 - lr * lambda_i| for the Hessian eigenvalues lambda_i.
* The tangent map Y_t = d theta_t / d theta_0 of SGD (Theorem A.1, Y <- (I - lr H_t) Y) and of SGD with
  momentum (Theorem A.3, as the running sum G <- beta G + H_t Y_t; Y <- Y - lr G), kept as Y_t = W T with
  a current block W and a graded accumulated factor T = diag(e^rho) T~ (discrete QR method with periodic
  re-orthonormalisation), so that no horizon over- or underflows and every singular value keeps its
  relative accuracy, however far below the largest.
* Finite-time exponents as the paper defines them: L_t = Y_t^T Y_t, exponents (1/(2t)) log eig(L_t)
  = (1/t) log sigma_i(Y_t), with the chaotic subspace spanned by the eigenvectors of L_t with eigenvalue > 1,
  each exponent with a float64 error estimate; it counts as chaotic only beyond it. The graded SVD
  (:func:`graded_svd`) resolves the whole spectrum; early in training (few low-rank steps) Y_t - I has low
  rank and an exact structured path replaces it by the SVD of an N x m matrix (see
  :func:`finite_time_lyapunov`).
* Theorem A.6's upper bound on the maximal exponent (running mean of the per-step maximal LLE), the
  determinant sum rule sum_i lambda_i(t) = (1/t) sum_s log|det J_s|, and the Benettin/QR algorithm for any
  map given its Jacobians (with the Henon and logistic maps as known references).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import scipy.linalg
import torch
from threadpoolctl import threadpool_limits

from chaosnb.curvature import Spectrum

EPS64 = torch.finfo(torch.float64).eps
LN2 = math.log(2.0)
LYAPUNOV_METHODS = ("auto", "gram", "graded", "full", "structured")
STRUCTURED_OVERSAMPLING = 10
"""Extra Gaussian probes beyond the rank bound in the structured path's range finder."""
STRUCTURED_MAX_LOG2_SCALE = 900
"""The structured path forms the TRUE Y_t; only while log2 of its norm bound and row scales are within +-this."""
_STRUCTURED_SEED = 20240917

class FactoredEigenpairs(NamedTuple):
    """H = P C diag(eigenvalues) C^T P^T with an orthonormal P known only by its maps (``subspace``:
    ``down`` = P^T, ``add_up_`` = += P; :class:`chaosnb.curvature.InputSubspace`) and C (d x r, orthonormal
    columns): the MLP's exact spectrum in its input subspace, d = 390 instead of N = 5,350."""

    eigenvalues: torch.Tensor
    coords: torch.Tensor
    subspace: object

    @property
    def num_params(self) -> int:
        return int(self.subspace.n)


def factored_hessian(spec: Spectrum, keep: torch.Tensor | None = None):
    """The tangent map's input for a spectrum (restricted to the ``keep`` mask of its eigenpairs: CGD's P H):
    :class:`FactoredEigenpairs` when the spectrum carries its input-subspace factor
    (``curvature.subspace_spectrum``), else the plain (eigenvalues, eigenvectors) pair."""
    lam, vecs = spec.eigenvalues, spec.eigenvectors
    coords, subspace = spec.info.get("coords"), spec.info.get("subspace")
    if keep is not None:
        lam = lam[keep]
    if coords is not None and subspace is not None:
        return FactoredEigenpairs(lam, coords if keep is None else coords[:, keep], subspace)
    return lam, (vecs if keep is None else vecs[:, keep])


HessianLike = torch.Tensor | Spectrum | tuple[torch.Tensor, torch.Tensor] | FactoredEigenpairs
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
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64,
                          device=eigenvalues.device if isinstance(eigenvalues, torch.Tensor) else None)
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
    if isinstance(h, FactoredEigenpairs):
        return h.eigenvalues.detach().to(torch.float64).reshape(-1), h.num_params
    lam, vecs = _pair(h, None)
    return lam, vecs.shape[0]


def _dense(h: torch.Tensor, n: int) -> torch.Tensor:
    if h.ndim != 2 or h.shape != (n, n):
        raise ValueError(f"a dense Hessian must have shape ({n}, {n}), got {tuple(h.shape)}")
    return h.detach().to(torch.float64)


def _pair(h: Spectrum | tuple[torch.Tensor, torch.Tensor], n: int | None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(h, FactoredEigenpairs):
        lam, vecs = h.eigenvalues, h.subspace.up(h.coords.to(torch.float64))
    elif isinstance(h, Spectrum):
        lam, vecs = h.eigenvalues, h.eigenvectors
        if vecs.shape[0] != h.num_params:
            raise ValueError("Spectrum eigenvectors do not have num_params rows")
    elif isinstance(h, tuple | list) and len(h) == 2:
        lam, vecs = h
    else:
        raise TypeError("h must be a dense (N, N) tensor, a Spectrum or an (eigenvalues, eigenvectors) pair")
    # tensors keep their device (torch.as_tensor would move them to torch's default device)
    lam = (lam if isinstance(lam, torch.Tensor) else torch.as_tensor(lam)).detach().to(torch.float64).reshape(-1)
    vecs = (vecs if isinstance(vecs, torch.Tensor) else torch.as_tensor(vecs)).detach().to(torch.float64)
    if vecs.ndim != 2 or vecs.shape[1] != lam.numel() or (n is not None and vecs.shape[0] != n):
        raise ValueError(f"eigenvectors must have shape ({n or 'N'}, {lam.numel()}), got {tuple(vecs.shape)}")
    return lam, vecs


# ----------------------------------------------------------------------------------------------------------
# Tangent map (Theorems A.1 and A.3)
# ----------------------------------------------------------------------------------------------------------

REORTH_LOG_COND = 4.0
"""Plain SGD: the current block is re-orthonormalised (QR) once the bound sum_s log kappa(J_s) on its log
condition number exceeds this (nats), so every direction of the block keeps a relative float64 accuracy of
~ (m + 2N) eps e^4 (the products and the QR are backward stable: a multiplicative perturbation of the block).
Tried at 8 on 1 Dec 2026 (USPS MLP, lr 1e-2, 200 steps: 3 QRs instead of 6, 69 s instead of 109 s, 180 uncertain
exponents instead of 158) and kept at 4: on a tiny MLP (tests/test_lyapunov.py, factored vs pair step) two
bottom exponents then differed by more than their two error estimates together (1.2e-9 against 8.6e-10 per step),
so the estimate would no longer be an honest bound."""
MOMENTUM_LOG_COND = 12.0
"""Momentum: the adaptive interval keeps the MEASURED block condition estimate max|R_ii| / min|R_ii| below
e^this (halving the interval above it, doubling it below half of it); each block's error is accounted with the
measured estimate. 12 since 1 Dec 2026 (4 before): USPS MLP, lr 1e-2, momentum 0.9, 200 steps: 2 QRs of the
10,700 x 5,350 state instead of 5 (96 s instead of 182 s), the same chaotic dimension, 245 uncertain instead of
228."""
REORTH_LOG_NORM = 300.0
"""Re-orthonormalise also when the block's norm bounds drift beyond e^(+-300) (no overflow/underflow)."""
SINGULAR_LOG_COND = 30.0
"""Step singular values below e^-30 of the step's largest count as killed (censored, see ``censor``)."""
MOMENTUM_INTERVAL = 64
"""Momentum: the first re-orthonormalisation interval (steps); it adapts to keep the measured block
condition estimate max|R_ii| / min|R_ii| below e^MOMENTUM_LOG_COND."""
GRADED_WINDOW = 10.0
"""Graded SVD: rows within this many nats of the current top row scale form one window."""
GRAM_MAX_SPREAD = 6.0
"""Fast path (Gram matrix + ``eigvalsh``) only while the row scales of T span at most this many nats."""
GRADED_GAP = 14.0
"""Graded SVD: a window's singular value is accepted once it exceeds every remaining row scale by this many
nats (the deflation error is then below N e^(-2 GRADED_GAP) relative)."""


def _scipy_threads() -> threadpool_limits:
    """scipy's BLAS (its own OpenBLAS) limited to torch's thread count for the duration: a run's worker is given
    one torch thread, and scipy's pool would otherwise start one thread per core in every worker."""
    return threadpool_limits(limits=torch.get_num_threads(), user_api="blas")


def _scipy_svd(a: torch.Tensor, compute_uv: bool):
    """scipy's SVD (its own LAPACK): divide and conquer first, then the QR-iteration driver ``gesvd``."""
    m = a.cpu().numpy()
    with _scipy_threads():
        try:
            out = scipy.linalg.svd(m, full_matrices=False, compute_uv=compute_uv, lapack_driver="gesdd")
        except (np.linalg.LinAlgError, ValueError):
            out = scipy.linalg.svd(m, full_matrices=False, compute_uv=compute_uv, lapack_driver="gesvd")
    return tuple(torch.from_numpy(x).to(a.device) for x in out) if compute_uv else torch.from_numpy(out).to(a.device)


def _svd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD (U, S, V^T) that survives torch's LAPACK divide and conquer failing to converge (``gesdd``, seen
    on a 5,000 x 5,350 graded window at t = 300): then scipy's ``gesdd`` (another LAPACK build), then its
    QR-iteration driver ``gesvd``, slower but converging where ``gesdd`` does not."""
    try:
        return torch.linalg.svd(a, full_matrices=False)
    except torch.linalg.LinAlgError:
        return _scipy_svd(a, compute_uv=True)


def _svdvals(a: torch.Tensor) -> torch.Tensor:
    """Singular values, with the same fallbacks as :func:`_svd`."""
    try:
        return torch.linalg.svdvals(a)
    except torch.linalg.LinAlgError:
        return _scipy_svd(a, compute_uv=False)


def _ldexp(x: torch.Tensor, k: int) -> torch.Tensor:
    """x * 2**k, exact (powers of two), in chunks so that 2**k itself never overflows."""
    while k:
        step = max(-1000, min(1000, k))
        x = x * 2.0**step
        k -= step
    return x


def _log_sum_exp2(rho: torch.Tensor) -> float:
    """0.5 log sum_i exp(2 rho_i): log of the Frobenius norm of diag(e^rho) T with unit rows (-inf if empty)."""
    finite = rho[torch.isfinite(rho)]
    return 0.5 * float(torch.logsumexp(2.0 * finite, 0)) if finite.numel() else -math.inf


def _upper_triangular_matmul(u: torch.Tensor, b: torch.Tensor, leaf: int = 1024) -> torch.Tensor:
    """u @ b for an upper-triangular u (zero below the diagonal), by recursive 2 x 2 blocking that skips the zero
    block: [[U11, U12], [0, U22]] b = [U11 b1 + U12 b2; U22 b2]; about 0.56 of the general product's flops at
    N = 5,350 (the BLAS has no float64 triangular-times-full product in torch)."""
    n = u.shape[0]
    if n <= leaf:
        return u @ b
    h = n // 2
    out = torch.empty(n, b.shape[1], dtype=b.dtype, device=b.device)
    out[:h] = _upper_triangular_matmul(u[:h, :h], b[:h], leaf)
    out[:h].addmm_(u[:h, h:], b[h:])
    out[h:] = _upper_triangular_matmul(u[h:, h:], b[h:], leaf)
    return out


def _graded_product(r: torch.Tensor, rho: torch.Tensor, tt: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """R diag(e^rho) T~ in graded form (rho', T~') for an upper-triangular R: rows of T~' have unit 2-norm, rho'
    their log scales.

    Each row is formed as sum_l M_il T~_l with M_il = R_il e^(rho_l - rho'_i), |M_il| <= 1 (no overflow at
    any spread of rho). ``tt=None`` means T~ = I. Zero rows get rho' = -inf.
    """
    with torch.no_grad():
        m = r.abs().log_().add_(rho[None, :])  # log |R_il| + rho_l, then M in place
        top = m.max(dim=1).values
        ok = torch.isfinite(top)
        shift = torch.where(ok, top, 0.0)
        m.sub_(shift[:, None]).exp_().copysign_(r)
        m[~ok] = 0.0
        prod = m if tt is None else _upper_triangular_matmul(m, tt)
        del m
        norms = torch.linalg.vector_norm(prod, dim=1)
        nz = norms > 0.0
        prod[nz] /= norms[nz, None]
        prod[~nz] = 0.0
        new_rho = torch.where(nz, shift + torch.log(torch.where(nz, norms, 1.0)), -math.inf)
    return new_rho, prod


def _step_bounds(lam: torch.Tensor, lr: float, momentum: float, complement: bool) -> tuple[float, float, bool]:
    """(log sigma_max, log sigma_min over the non-killed singular values, killed?) of one step's Jacobian.

    Plain SGD: the singular values of I - lr V diag(lam) V^T are |1 - lr lam_i| (and 1 on the complement of
    span V). Momentum, on the state (Y, lr G): per eigenvalue the 2 x 2 block [[1 - lr lam, -beta],
    [lr lam, beta]] (determinant beta), whose singular values give the bounds.
    """
    if momentum > 0.0:
        x = lr * lam
        if complement:
            x = torch.cat([x, x.new_zeros(1)])
        f = (1.0 - x) ** 2 + x * x + 2.0 * momentum**2
        smax = torch.sqrt(0.5 * (f + torch.sqrt(torch.clamp(f * f - 4.0 * momentum**2, min=0.0))))
        hi = float(torch.log(smax.max()))
        return hi, float(torch.log(momentum / smax).min()), False
    s = torch.abs(1.0 - lr * lam)
    if complement:
        s = torch.cat([s, s.new_ones(1)])
    if s.numel() == 0:
        return 0.0, 0.0, False
    hi = float(torch.log(s.max()))
    logs = torch.log(s)
    alive = logs > hi - SINGULAR_LOG_COND
    return hi, float(logs[alive].min()), bool((~alive).any())


class TangentMap:
    """Y_t = d theta_t / d theta_0 (N x N, float64) along an SGD trajectory, Y_0 = I.

    Plain SGD (Theorem A.1): Y <- (I - lr H_t) Y. With momentum beta (Theorem A.3, torch.optim.SGD with
    dampening 0: buf <- beta buf + g; theta <- theta - lr buf, buf starting at 0): G <- beta G + H_t Y;
    Y <- Y - lr G (Y is the theta-block of the tangent map of the 2N-dimensional (theta, buf) system; the
    state carries lr G).

    Representation (discrete QR method with periodic re-orthonormalisation): Y_t = W_t T with T = diag(e^rho)
    T~ kept graded (unit rows T~, log row scales rho, so no spread of the spectrum over- or underflows) and
    W_t the current block, W <- J_t W each step. When the block's condition bound exceeds e^REORTH_LOG_COND
    (plain SGD: sum of the steps' log kappa(J_s); momentum: an adaptive interval that keeps the measured estimate
    below e^MOMENTUM_LOG_COND) the block is factored:
    its columns are pre-sorted by their weight |W_j| e^(rho_j), W P = Q R, W <- Q, T <- R P^T T (graded
    product). Every direction then carries a relative error ~ (m + 2N) eps e^(log condition) per block
    (accumulated in ``relative_error``), however small its singular value: the whole spectrum is resolved at
    any horizon, except directions killed by (near-)singular steps (an eigenvalue 1/lr), whose size is only
    bounded (``censor``). Before the first factorisation T = I and W is Y itself.

    ``update_rank`` is an upper bound on rank(Y_t - I): every low-rank step adds the number of (nonzero)
    eigenpairs it used, a dense step sets it to N. While it is small :func:`finite_time_lyapunov` takes the
    exact structured path.
    """

    def __init__(self, num_params: int, lr: float, momentum: float = 0.0,
                 device: torch.device | str | None = None) -> None:
        if num_params <= 0:
            raise ValueError("num_params must be positive")
        if not 0.0 <= momentum < 1.0:
            raise ValueError("momentum must be in [0, 1)")
        if not lr > 0.0:
            raise ValueError(f"lr must be positive, got {lr}")
        self.num_params = int(num_params)
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.t = 0
        self._update_rank = 0
        self._w = torch.eye(self.num_params, dtype=torch.float64, device=device)
        self._g = torch.zeros_like(self._w) if self.momentum > 0.0 else None
        self._rho: torch.Tensor | None = None
        self._tt: torch.Tensor | None = None
        self._block = {"steps": 0, "log_cond": 0.0, "log_hi": 0.0, "log_lo": 0.0}
        self._rel_err = 0.0
        self._censor = -math.inf
        self._t_log_norm = 0.0
        self._interval = MOMENTUM_INTERVAL
        self.reorthonormalisations = 0
        self._buf: torch.Tensor | None = None

    @property
    def update_rank(self) -> int:
        """Upper bound on rank(Y_t - I) (N after any dense step; see the class docstring)."""
        return self._update_rank

    @property
    def relative_error(self) -> float:
        """First-order bound on the relative (multiplicative) error of the representation, all blocks so far
        including the open one: sum_b (m_b + 2N) eps kappa_b."""
        return self._rel_err + self._block_error()

    @property
    def censor(self) -> float:
        """log of an upper bound on |Y_t v| for directions killed by (near-)singular steps (-inf if none)."""
        return self._censor

    def _block_error(self, log_cond: float | None = None) -> float:
        b = self._block
        lc = b["log_cond"] if log_cond is None else log_cond
        if self._g is not None and log_cond is None:  # momentum: the per-step 2 x 2 bounds compound far too
            lc = min(lc, MOMENTUM_LOG_COND)  # pessimistically; the adaptive interval targets this (an estimate)
        return min(1.0, (b["steps"] + 2 * self.num_params) * EPS64 * math.exp(min(lc, 700.0)))

    def _log_norm_bound(self) -> float:
        """Upper bound on log ||Y_t||_2: log ||W|| (bounded by the block's steps) + log ||T||_F."""
        return self._t_log_norm + self._block["log_hi"]

    def step(self, h: HessianLike, lr: float | None = None) -> None:
        """One training step with Hessian (or CGD's P H) ``h``; ``lr`` overrides the default for this step.

        Pair/Spectrum (lam, V): W <- W - lr V (lam[:, None] * (V^T W)) as one product V^T W and one in-place
        addmm (never forming I - lr H; for a low-rank pair the complement of span(V) is left unchanged, J = I
        there). Dense h: W <- W - lr H W. Momentum: lr G <- beta lr G + lr H W; W <- W - (lr G).
        :class:`FactoredEigenpairs` (V = P C): the same step through P's maps, W <- W - lr P (C (lam * (C^T P^T
        W))), ~ (d r + N s_1) N flops instead of 2 r N^2 (the MLP: ~8x fewer).
        """
        lr = self.lr if lr is None else float(lr)
        n = self.num_params
        w = self._w
        if isinstance(h, FactoredEigenpairs):
            self._factored_step(h, lr)
            return
        if isinstance(h, torch.Tensor):
            hd = _dense(h, n).to(w.device)
            lam, complement, rank = torch.linalg.eigvalsh(hd), False, n
        else:
            lam, vecs = _pair(h, n)
            lam, vecs = lam.to(w.device), vecs.to(w.device)
            complement, rank = lam.numel() < n, int((lam != 0.0).sum())
        log_hi, log_lo, killed = self._checked_bounds(lam, lr, complement)
        if isinstance(h, torch.Tensor):
            p = hd @ w
            scale = 1.0
        else:  # P = V^T W into a reused buffer (a fresh r x N block each step costs page faults)
            r = lam.numel()
            if self._buf is None or self._buf.shape[0] < r or self._buf.device != w.device:
                self._buf = torch.empty(max(r, 1), n, dtype=torch.float64, device=w.device)
            p = torch.mm(vecs.T, w, out=self._buf[:r])
            p.mul_(lam[:, None])
            scale = None
        g = self._g
        if g is None:
            if scale is None:
                w.addmm_(vecs, p, alpha=-lr)
            else:
                w.add_(p, alpha=-lr)
        else:
            if scale is None:
                g.addmm_(vecs, p, beta=self.momentum, alpha=self.lr)
            else:
                g.mul_(self.momentum).add_(p, alpha=self.lr)
            w.add_(g, alpha=-lr / self.lr)
        del p
        self._finish_step(log_hi, log_lo, killed, rank)

    def _factored_step(self, h: FactoredEigenpairs, lr: float) -> None:
        n, w = self.num_params, self._w
        if h.num_params != n:
            raise ValueError(f"factored eigenpairs for N = {h.num_params}, tangent map has N = {n}")
        lam = h.eigenvalues.detach().to(device=w.device, dtype=torch.float64).reshape(-1)
        coords = h.coords.detach().to(device=w.device, dtype=torch.float64)
        if coords.ndim != 2 or coords.shape[1] != lam.numel():
            raise ValueError(f"coords must have shape (d, {lam.numel()}), got {tuple(coords.shape)}")
        log_hi, log_lo, killed = self._checked_bounds(lam, lr, lam.numel() < n)
        z = coords @ (lam[:, None] * (coords.T @ h.subspace.down(w)))  # C lam C^T P^T W, d x N
        if self._g is None:
            h.subspace.add_up_(w, z, alpha=-lr)
        else:
            self._g.mul_(self.momentum)
            h.subspace.add_up_(self._g, z, alpha=self.lr)
            w.add_(self._g, alpha=-lr / self.lr)
        self._finish_step(log_hi, log_lo, killed, int((lam != 0.0).sum()))

    def _checked_bounds(self, lam: torch.Tensor, lr: float, complement: bool) -> tuple[float, float, bool]:
        """The step's log norm bounds and whether it kills a direction (``_step_bounds``); raises for non-finite
        eigenvalues or a step that would grow Y by more than e^REORTH_LOG_NORM."""
        if not bool(torch.isfinite(lam).all()):
            raise FloatingPointError("tangent map step: non-finite Hessian eigenvalues")
        log_hi, log_lo, killed = _step_bounds(lam, lr, self.momentum, complement)
        if log_hi > REORTH_LOG_NORM:
            raise FloatingPointError(f"tangent map step grows by e^{log_hi:.0f} in one step (|lr H| too large?)")
        return log_hi, log_lo, killed

    def _finish_step(self, log_hi: float, log_lo: float, killed: bool, rank: int) -> None:
        """The bookkeeping after a step: rank bound, block bounds, censor, re-orthonormalisation when due."""
        n = self.num_params
        g = self._g
        self._update_rank = min(n, self._update_rank + rank)
        self.t += 1
        b = self._block
        b["steps"] += 1
        b["log_hi"] += log_hi
        b["log_lo"] += log_lo
        b["log_cond"] += log_hi - log_lo
        self._censor += log_hi
        if killed:  # rounding noise of size N eps ||Y|| in the killed directions
            self._censor = max(self._censor, math.log(n * EPS64) + self._log_norm_bound())
        due = (b["steps"] >= self._interval) if g is not None else (b["log_cond"] > REORTH_LOG_COND)
        if due or b["log_hi"] > REORTH_LOG_NORM or b["log_lo"] < -REORTH_LOG_NORM:
            self._reorthonormalise()

    def _factor_block(self, z: torch.Tensor, mode: str) -> tuple[torch.Tensor | None, torch.Tensor,
                                                                  torch.Tensor, torch.Tensor]:
        """Q (or None), R of z[:, perm] with the columns pre-sorted by weight |z_j| e^rho_j; the permutation."""
        weights = torch.log(torch.linalg.vector_norm(z, dim=0))
        if self._rho is not None:
            weights = weights + self._rho
        perm = torch.argsort(weights, descending=True)
        if mode == "r":
            return None, torch.linalg.qr(z[:, perm], mode="r")[1], perm, weights
        q, r = torch.linalg.qr(z[:, perm])
        return q, r, perm, weights

    def _graded_t(self, r: torch.Tensor, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rho', T~') of R P^T T in graded form."""
        n = self.num_params
        if self._rho is None:
            rho, tt = torch.zeros(n, dtype=torch.float64, device=r.device), None
        else:
            rho, tt = self._rho[perm], self._tt[perm]
        new_rho, new_tt = _graded_product(r, rho, tt)
        if self._rho is None:  # T~ = P^T: the product R P^T is a column permutation of R
            new_tt = new_tt[:, torch.argsort(perm)]
        return new_rho, new_tt

    def _reorthonormalise(self) -> None:
        n = self.num_params
        z = self._w if self._g is None else torch.cat([self._w, self._g])
        q, r, perm, _ = self._factor_block(z, "reduced")
        del z
        if self._g is not None:  # measured block condition estimate: adapt the interval
            d = torch.log(torch.diagonal(r).abs())
            log_cond = float(d.max() - d.min()) if bool(torch.isfinite(d).all()) else math.inf
            if log_cond > MOMENTUM_LOG_COND:
                self._interval = max(1, self._interval // 2)
            elif log_cond < 0.5 * MOMENTUM_LOG_COND:
                self._interval = min(4096, 2 * self._interval)
            self._rel_err += self._block_error(log_cond)
        else:
            self._rel_err += self._block_error()
        self._rho, self._tt = self._graded_t(r, perm)
        del r
        self._w = q[:n].contiguous()
        self._g = None if self._g is None else q[n:].contiguous()
        self._t_log_norm = _log_sum_exp2(self._rho)
        self._block = {"steps": 0, "log_cond": 0.0, "log_hi": 0.0, "log_lo": 0.0}
        self.reorthonormalisations += 1

    def graded_snapshot(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(rho, T~, relative error) with Y_t = Q diag(e^rho) T~ for an orthonormal Q (not formed): the QR of
        the current block folded into T, leaving the state untouched."""
        _, r, perm, _ = self._factor_block(self._w, "r")
        rho, tt = self._graded_t(r, perm)
        log_cond = self._block["log_cond"]
        if self._g is not None:
            d = torch.log(torch.diagonal(r).abs())
            log_cond = float(d.max() - d.min()) if bool(torch.isfinite(d).all()) else math.inf
        return rho, tt, self._rel_err + self._block_error(log_cond)

    def matrix(self) -> torch.Tensor:
        """The true Y_t. May overflow to inf (or underflow to 0) over long horizons."""
        if self._rho is None:
            return self._w.clone()
        return self._w @ (torch.exp(self._rho)[:, None] * self._tt)

    def scaled(self) -> tuple[torch.Tensor, float]:
        """(Y_scaled, log_scale) with Y_t = Y_scaled * exp(log_scale); max|Y_scaled| in [0.5, 1). Parts of
        Y_t below 2^-1074 max|Y_t| are lost (use :meth:`lyapunov` for the spectrum)."""
        if self._rho is None:
            y, shift = self._w.clone(), 0.0
        else:
            shift = float(self._rho[torch.isfinite(self._rho)].max())
            y = self._w @ (torch.exp(self._rho - shift)[:, None] * self._tt)
        m = y.abs().max()
        if not bool(torch.isfinite(m)):
            raise FloatingPointError("tangent map is not finite")
        e = int(torch.frexp(m)[1]) if float(m) > 0.0 else 0
        return _ldexp(y, -e), shift + e * LN2

    def lyapunov(self, tol: float = 0.0, method: str = "auto", vectors: bool = True) -> FiniteTimeLyapunov:
        """The finite-time exponents of Y_t (see :func:`finite_time_lyapunov`)."""
        return finite_time_lyapunov(self, tol, method, vectors)

    def structured_applicable(self, strict: bool = True) -> bool:
        """Whether the structured (low-rank Y_t - I) path can be used: the true Y_t is representable
        (log2 of the bound on ||Y_t|| and of the smallest row scale within +-STRUCTURED_MAX_LOG2_SCALE) and,
        if ``strict`` (what ``method="auto"`` asks), it pays off: 2 (update_rank + STRUCTURED_OVERSAMPLING)
        < N / 2."""
        limit = STRUCTURED_MAX_LOG2_SCALE * LN2
        if self._log_norm_bound() > limit or self._block["log_lo"] < -limit:
            return False
        if self._rho is not None:
            finite = self._rho[torch.isfinite(self._rho)]
            if finite.numel() and float(finite.min()) < -limit:
                return False
        return not strict or 2 * (self._update_rank + STRUCTURED_OVERSAMPLING) < self.num_params / 2

    def state_dict(self) -> dict:
        """Everything needed to continue bit-identically: plain numbers and tensors (clones)."""
        def c(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.clone()

        return {"format": 2, "num_params": self.num_params, "lr": self.lr, "momentum": self.momentum,
                "t": self.t, "update_rank": self._update_rank, "w": c(self._w), "lr_g": c(self._g),
                "rho": c(self._rho), "tt": c(self._tt), "block": dict(self._block), "rel_err": self._rel_err,
                "censor": self._censor, "t_log_norm": self._t_log_norm, "interval": self._interval,
                "reorthonormalisations": self.reorthonormalisations}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` (the shapes and the presence of momentum must agree). Older
        checkpoints (``y``/``g``/``log2_scale``, no ``format``) load as W = Y_scaled, T = 2^k I, lr G = lr g;
        without ``update_rank`` the bound is N (always the full path)."""
        if int(state["num_params"]) != self.num_params:
            raise ValueError(f"state is for {state['num_params']} parameters, not {self.num_params}")
        legacy = "format" not in state
        g_key = "g" if legacy else "lr_g"
        if (state[g_key] is None) != (self._g is None):
            raise ValueError("state and tangent map disagree on momentum")
        device = self._w.device

        def f64(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.to(device=device, dtype=torch.float64).clone()

        self.lr, self.momentum = float(state["lr"]), float(state["momentum"])
        self.t = int(state["t"])
        self._update_rank = min(self.num_params, int(state.get("update_rank", self.num_params)))
        if legacy:
            self._w = f64(state["y"])
            self._g = None if state["g"] is None else self.lr * f64(state["g"])
            k = int(state["log2_scale"])
            self._rho, self._tt = None, None
            if k:
                self._rho = torch.full((self.num_params,), k * LN2, dtype=torch.float64, device=device)
                self._tt = torch.eye(self.num_params, dtype=torch.float64, device=device)
            self._block = {"steps": 0, "log_cond": REORTH_LOG_COND, "log_hi": math.log(self.num_params),
                           "log_lo": 0.0}
            self._rel_err, self._censor, self._interval = 0.0, -math.inf, MOMENTUM_INTERVAL
            self._t_log_norm = 0.0 if self._rho is None else _log_sum_exp2(self._rho)
            self.reorthonormalisations = 0
            return
        self._w, self._g = f64(state["w"]), f64(state["lr_g"])
        self._rho, self._tt = f64(state["rho"]), f64(state["tt"])
        self._block = dict(state["block"])
        self._rel_err, self._censor = float(state["rel_err"]), float(state["censor"])
        self._t_log_norm, self._interval = float(state["t_log_norm"]), int(state["interval"])
        self.reorthonormalisations = int(state["reorthonormalisations"])


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
    was computed: "graded" (graded representation), "full" (SVD of the formed Y_t), "structured" (low-rank
    Y_t - I), see :func:`finite_time_lyapunov`. ``errors`` (optional; the graded path sets it) overrides the
    default first-order error estimate of the full SVD. ``resolution`` on the graded path is the largest
    exponent an unresolved direction could have (-inf if none); finite exponents may lie below it.
    """

    exponents: torch.Tensor
    vectors: torch.Tensor | None
    t: int
    resolution: float
    tol: float = 0.0
    method: str = "full"
    errors: torch.Tensor | None = None
    eigenvector_mask: torch.Tensor | None = None

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
        return torch.log1p(self.exponents.numel() * EPS64 * torch.exp(gap)) / self.t

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

    @property
    def decision_exponents(self) -> torch.Tensor:
        """Exponents to hand to ``perturb.perturbation_direction(exponents=..., tol=self.tol)`` so that its
        threshold reproduces ``chaotic_mask`` (uncertain exponents clamped to tol) and its argmin picks the
        smallest RESOLVED exponent (unresolved ones set equal to it; they come after it, argmin takes the
        first)."""
        x = torch.where(self.chaotic_mask, self.exponents, torch.clamp(self.exponents, max=self.tol))
        finite = self.resolved
        if bool(finite.any()) and not bool(finite.all()):
            x = torch.where(finite, x, x[finite].min())
        return x

    def _require_vectors(self) -> torch.Tensor:
        if self.vectors is None:
            raise ValueError("this finite-time spectrum was computed without eigenvectors (vectors=False); "
                             "call TangentMap.lyapunov(..., vectors=True) for subspaces and directions")
        return self.vectors

    def chaotic_subspace(self) -> torch.Tensor:
        """Orthonormal basis (columns) of V_chaotic(t): eigenvectors of L_t with eigenvalue > 1."""
        return self._require_vectors()[:, self.chaotic_mask]

    def non_chaotic_subspace(self) -> torch.Tensor:
        """Orthonormal basis (columns) of V_non-chaotic(t), the orthogonal complement of V_chaotic(t)."""
        return self._require_vectors()[:, ~self.chaotic_mask]


def finite_time_exponents(y: torch.Tensor, t: int, log_scale: float = 0.0, tol: float = 0.0,
                          vectors: bool = True) -> FiniteTimeLyapunov:
    """Finite-time exponents of the tangent map Y_t = y * exp(log_scale) after t steps.

    Computed from the SVD of ``y`` (never forming Y^T Y, which would square the condition number) as
    (log sigma_i(y) + log_scale) / t; ``vectors=False``: the singular values only (``vectors`` None).
    """
    if t <= 0:
        raise ValueError("finite-time exponents need t >= 1 steps")
    y = (y if isinstance(y, torch.Tensor) else torch.as_tensor(y)).detach().to(torch.float64)
    if y.ndim != 2:
        raise ValueError("y must be a matrix")
    if not bool(torch.isfinite(y).all()):
        raise ValueError("y has inf/nan entries; pass the scaled tangent map and its log_scale instead")
    if vectors:
        _, s, vh = _svd(y)
    else:
        s, vh = _svdvals(y), None
    threshold = float(s[0]) * y.shape[1] * EPS64
    exponents = (torch.log(s) + log_scale) / t
    exponents[s < threshold] = -math.inf
    resolution = (math.log(threshold) + log_scale) / t if threshold > 0 else -math.inf
    basis = None if vh is None else vh.T.contiguous()
    return FiniteTimeLyapunov(exponents, basis, int(t), resolution, float(tol), "full")


def finite_time_lyapunov(tangent_map: TangentMap, tol: float = 0.0, method: str = "auto", vectors: bool = True
                         ) -> FiniteTimeLyapunov:
    """Finite-time exponents of a :class:`TangentMap` (no overflow at any horizon).

    ``method="graded"``: from the tangent map's graded representation Y_t = Q diag(e^rho) T~ by
    :func:`graded_svd`; resolves the whole spectrum at any horizon, each exponent with its own error
    estimate (``errors``: the representation's relative error, the window SVD's and the deflation's, over
    t). ``"full"``: the SVD of the formed, scaled N x N matrix (:func:`finite_time_exponents`): only
    exponents within ~(36 + ln N)/t of the largest are resolved. ``"structured"``: the exact low-rank path.
    A = Y_t - I has rank <= k = ``tangent_map.update_rank``; on the orthogonal complement of
    S = range(A) + range(A^T) both Y and Y^T act as the identity, so those directions are eigenvectors of
    L_t with eigenvalue 1 (exponent exactly 0, non-chaotic for any tol >= 0), S is invariant under L_t and the
    other singular values and vectors come from the SVD of the N x m matrix Y Q, Q an orthonormal basis of S.
    Q comes from a randomized range finder with the exact rank bound (Gaussian probes A Omega_1, A^T Omega_2
    of width k + STRUCTURED_OVERSAMPLING, fixed seed) and a rank-revealing SVD (singular values above
    N eps s_max); the complement's basis from a complete QR of Q, so ``vectors`` stays a full orthonormal
    N x N matrix in descending-exponent order. Cost ~ N^2 k instead of ~ N^3; the resolution / -inf rule is
    the full path's (sigma_max N eps). It needs the true Y_t to be representable
    (:meth:`TangentMap.structured_applicable`), else ValueError. ``"auto"`` (the default) takes it when also
    2 (k + STRUCTURED_OVERSAMPLING) < N / 2, else ``"gram"`` (``_gram_exponents``: eigenvalues of
    L_t = Y^T Y and only the eigenvectors the engine needs) when the spectrum is narrow enough for it, else the
    full path when its singular values are all resolved (``_resolved_full_exponents``: ~23 nats of spread, twice
    the Gram matrix's, for one SVD), else the graded path.

    ``vectors=False`` asks for the exponents only (with their error estimates, chaotic dimension and
    resolution): the gram path then stops after the eigenvalues of L_t (one ``eigvalsh``, no eigenvector) and
    the full path after the singular values; ``vectors`` of the result is None and the subspace
    methods raise. The exponents equal those of the same path with vectors up to the rounding of another LAPACK
    driver. The structured and graded paths need their vectors on the way and return them.
    """
    if method not in LYAPUNOV_METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods are: {', '.join(LYAPUNOV_METHODS)}")
    if tangent_map.t <= 0:
        raise ValueError("finite-time exponents need t >= 1 steps")
    if method == "structured" and not tangent_map.structured_applicable(strict=False):
        raise ValueError("the structured path needs a representable Y_t (log2 of its norm bound and row scales "
                         f"within +-{STRUCTURED_MAX_LOG2_SCALE}); use method='graded'")
    if method == "structured" or (method == "auto" and tangent_map.structured_applicable()):
        return _structured_exponents(tangent_map, tol)
    if method == "full":
        y, log_scale = tangent_map.scaled()
        return finite_time_exponents(y, tangent_map.t, log_scale, tol, vectors)
    if method in ("auto", "gram"):
        fast = _gram_exponents(tangent_map, tol, vectors)
        if fast is not None:
            return fast
        if method == "gram":
            raise ValueError("the gram path does not apply here (spectrum too wide or too many chaotic "
                             "directions); use method='graded'")
    snapshot = None
    if method == "auto" and tangent_map.structured_applicable(strict=False):  # Y_t representable: one SVD may do
        snapshot = _snapshot_beyond_one_svd(tangent_map)
        if snapshot is None:
            wide = _resolved_full_exponents(tangent_map, tol, vectors)
            if wide is not None:
                return wide
    return _graded_exponents(tangent_map, tol, snapshot)


def _structured_exponents(tangent_map: TangentMap, tol: float) -> FiniteTimeLyapunov:
    """The structured path of :func:`finite_time_lyapunov` (checks done by the caller)."""
    n, t = tangent_map.num_params, tangent_map.t
    a = tangent_map.matrix()  # the true Y_t (representable: checked by the caller)
    a.diagonal().sub_(1.0)  # A = Y_t - I
    width = min(tangent_map.update_rank + STRUCTURED_OVERSAMPLING, n)
    gen = torch.Generator().manual_seed(_STRUCTURED_SEED)
    omega = torch.randn(n, 2 * width, generator=gen, dtype=torch.float64, device=gen.device).to(a.device)
    probes = torch.cat([a @ omega[:, :width], a.T @ omega[:, width:]], dim=1)
    del omega
    u, sc, _ = _svd(probes)
    del probes
    m = int((sc > sc[0] * n * EPS64).sum())  # 0 when A = 0
    if m:
        basis, _ = torch.linalg.qr(u[:, :m], mode="complete")  # [Q, Q_perp], orthonormal N x N
    else:
        basis = torch.eye(n, dtype=torch.float64, device=a.device)
    del u
    q = basis[:, :m]
    _, s, wh = _svd(a @ q + q)  # Y Q = A Q + Q
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


def graded_svd(rho: torch.Tensor, tt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Singular values and right singular vectors of T = diag(e^rho) T~ (unit rows) at any spread of rho.

    Deflation by windows of row scales: the rows within GRADED_WINDOW nats of the top one (plus the rows left
    over from the previous window) are scaled by e^-top and decomposed (SVD, absolute error ~ N eps e^top).
    Their singular values above every remaining row scale + GRADED_GAP are final: the remaining rows (norm
    <= sqrt(n) e^next) move them by a relative N e^(-2 GRADED_GAP) at most, and the remaining problem is T
    restricted to the orthogonal complement of the accepted right singular vectors (exact up to the same
    order: block-triangular Schur complement). The others are carried to the next window as rows s_j v_j^T;
    the remaining rows are projected onto the complement. Values below N eps of their window's largest are
    rounding noise: unresolved. A value's relative error estimate is N eps e^(top - log sigma) of its window plus
    the relative errors of the carried rows weighted by their share of its left singular vector (sum_j u_ji^2
    rel_j), plus the deflation term. Returns (log sigma descending with -inf for unresolved, vectors N x N as
    columns, error of each log sigma (inf for unresolved), log of the largest value an unresolved direction
    can have (-inf if none)).
    """
    n = tt.shape[1]
    dev = tt.device
    order = torch.argsort(rho, descending=True)
    order = order[torch.isfinite(rho[order])]
    scales = rho[order].tolist()
    rows_all = tt[order]
    log_floor = math.log(n * EPS64)
    logs, vecs, errs = [], [], []
    lost_vecs: list[torch.Tensor] = []
    log_lost = -math.inf
    removed: torch.Tensor | None = None  # N x k: accepted and lost directions so far
    left_rows = torch.zeros(0, n, dtype=torch.float64, device=dev)
    left_scales = torch.zeros(0, dtype=torch.float64, device=dev)
    left_rel = torch.zeros(0, dtype=torch.float64, device=dev)  # relative error each carried row brings along
    i, total = 0, len(scales)
    while i < total or left_rows.shape[0]:
        if i < total:
            j = i + 1
            while j < total and scales[j] >= scales[i] - GRADED_WINDOW:
                j += 1
            new = rows_all[i:j]
            new_scales = torch.tensor(scales[i:j], dtype=torch.float64, device=dev)
            if removed is not None:  # project onto the complement of what is decided
                new = new - (new @ removed) @ removed.T
                norms = torch.linalg.vector_norm(new, dim=1)
                keep = norms > n * EPS64
                if bool((~keep).any()):
                    log_lost = max(log_lost, float(new_scales[~keep].max()) + log_floor)
                new = new[keep] / norms[keep, None]
                new_scales = new_scales[keep] + torch.log(norms[keep])
            i = j
            rows = torch.cat([left_rows, new])
            row_scales = torch.cat([left_scales, new_scales])
        else:
            rows, row_scales = left_rows, left_scales
        carried = left_rows.shape[0]
        if rows.shape[0] == 0:
            left_rows, left_scales = rows, row_scales
            continue
        top = float(row_scales.max())
        u, s, vh = _svd(torch.exp(row_scales - top)[:, None] * rows)
        log_s = torch.log(s) + top
        # relative error of each value: this window's rounding N eps e^top / sigma_i, plus what the carried rows
        # bring (a carried row s_j v_j^T is only as accurate as the window that produced it), weighted by their share
        # of the value's left singular vector: sum_j u_ji^2 rel_j
        rel_err = n * EPS64 * torch.exp(top - log_s)
        if carried:
            rel_err = rel_err + u[:carried].square().T @ left_rel
        noise = float(log_s[0]) + log_floor
        nxt = scales[i] if i < total else -math.inf
        accept = (log_s > noise) & (log_s >= nxt + GRADED_GAP)
        lost = log_s <= noise
        carry = ~accept & ~lost
        if bool(lost.any()):
            log_lost = max(log_lost, noise)
            lost_vecs.append(vh[lost])
        err = torch.log1p(rel_err[accept] + n * torch.exp(2.0 * (nxt - log_s[accept])))
        logs.append(log_s[accept])
        vecs.append(vh[accept])
        errs.append(err)
        decided = vh[accept | lost].T
        if decided.shape[1]:
            removed = decided if removed is None else torch.cat([removed, decided], dim=1)
        left_rows, left_scales = vh[carry], log_s[carry]
        left_rel = rel_err[carry]
    log_sigma = torch.cat(logs) if logs else torch.zeros(0, dtype=torch.float64, device=dev)
    v = torch.cat(vecs).T if vecs else torch.zeros(n, 0, dtype=torch.float64, device=dev)
    err = torch.cat(errs) if errs else torch.zeros(0, dtype=torch.float64, device=dev)
    idx = torch.argsort(log_sigma, descending=True)
    log_sigma, v, err = log_sigma[idx], v[:, idx], err[idx]
    lost_v = torch.cat(lost_vecs).T if lost_vecs else torch.zeros(n, 0, dtype=torch.float64, device=dev)
    missing = n - v.shape[1] - lost_v.shape[1]
    if missing > 0:  # rows that vanished or were absent (rho = -inf): complete the basis
        known = torch.cat([v, lost_v], dim=1)
        full_q, _ = torch.linalg.qr(known, mode="complete")
        lost_v = torch.cat([lost_v, full_q[:, known.shape[1]:]], dim=1)
        log_lost = max(log_lost, -math.inf)
    k = lost_v.shape[1]
    inf = torch.full((k,), math.inf, dtype=torch.float64, device=dev)
    return (torch.cat([log_sigma, -inf]), torch.cat([v, lost_v], dim=1), torch.cat([err, inf]), log_lost)


GRAM_BLOCKS = 8
"""Block rows of the Gram matrix's lower triangle (``_gram_lower``): (b + 1) / (2b) of a full product's flops."""


def _gram_lower(ys: torch.Tensor, blocks: int = GRAM_BLOCKS) -> torch.Tensor:
    """L = Y^T Y, lower triangle only (what ``eigh``/``eigvalsh`` read, UPLO='L'), the syrk of BLAS done as
    ``blocks`` block rows L[i0:i1, :i1] = Y[:, i0:i1]^T Y[:, :i1]: ~(blocks + 1) / (2 blocks) of the flops of
    the full product. Entries above the diagonal blocks are zero (use ``.tril()`` for the lower triangle)."""
    n = ys.shape[1]
    gram = torch.zeros(n, n, dtype=ys.dtype, device=ys.device)
    edges = [round(n * i / blocks) for i in range(blocks + 1)]
    for i0, i1 in zip(edges[:-1], edges[1:], strict=True):
        if i1 > i0:
            torch.mm(ys[:, i0:i1].T, ys[:, :i1], out=gram[i0:i1, :i1])
    return gram


class _Tridiagonal:
    """L = Q T Q^T for the symmetric N x N matrix whose lower triangle is ``lower`` (the upper is not read): one
    blocked Householder tridiagonalisation (LAPACK ``sytrd``, ~4/3 N^3 flops, what ``eigvalsh`` spends too),
    after which all eigenvalues (``sterf``) and any eigenvectors (MRRR, ``stemr``, O(N) each, plus the
    back-transformation Q Z by ``ormqr`` on the reflectors, 2 N^2 flops each) are cheap. CPU only; raises
    ``numpy.linalg.LinAlgError`` if a LAPACK step reports failure."""

    def __init__(self, lower: torch.Tensor) -> None:
        n = self.n = lower.shape[0]
        self.device = lower.device
        lapack = scipy.linalg.lapack
        lwork, _ = lapack.dsytrd_lwork(n, lower=1)
        a = np.asfortranarray(lower.detach().cpu().numpy())
        with _scipy_threads():
            self.c, self.d, e, self.tau, info = lapack.dsytrd(a, lower=1, lwork=int(lwork), overwrite_a=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"dsytrd failed (info {info})")
        self.e = np.zeros(n)
        self.e[:-1] = e

    def eigenvalues(self) -> torch.Tensor:
        """All eigenvalues, ascending (``sterf``)."""
        vals, info = scipy.linalg.lapack.dsterf(self.d.copy(), self.e[:-1].copy())
        if info != 0:
            raise np.linalg.LinAlgError(f"dsterf failed (info {info})")
        return torch.from_numpy(vals).to(self.device)

    def _mrrr(self, il: int, iu: int) -> np.ndarray:
        """Eigenvectors il..iu (1-based, ascending) of T."""
        m, _, z, info = scipy.linalg.lapack.dstemr(self.d.copy(), self.e.copy(), 2, 0.0, 0.0, il, iu, compute_v=1)
        if info != 0 or m != iu - il + 1:
            raise np.linalg.LinAlgError(f"dstemr failed (info {info}, {m} of {iu - il + 1} vectors)")
        return z[:, :m]

    def eigenvectors(self, ranges: Sequence[tuple[int, int]]) -> torch.Tensor:
        """Eigenvectors of L for the 1-based index ranges (il, iu) of the ascending eigenvalues, each range's
        columns in descending order, the ranges side by side."""
        n = self.n
        z = np.asfortranarray(np.concatenate([self._mrrr(il, iu)[:, ::-1] for il, iu in ranges], axis=1))
        # Q = diag(1, Q~), Q~ the product of the n - 1 reflectors stored QR-style below the subdiagonal
        with _scipy_threads():
            qz, _, info = scipy.linalg.lapack.dormqr("L", "N", self.c[1:, :n - 1], self.tau[:n - 1], z[1:],
                                                     lwork=64 * z.shape[1])
        if info != 0:
            raise np.linalg.LinAlgError(f"dormqr failed (info {info})")
        z[1:] = qz
        return torch.from_numpy(np.ascontiguousarray(z)).to(self.device)

    def extreme_eigenvectors(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenvectors of L for its k largest eigenvalues (columns, descending) and its smallest (N x 1),
        1 <= k <= N - 2."""
        vecs = self.eigenvectors([(self.n - k + 1, self.n), (1, 1)])
        return vecs[:, :k], vecs[:, k:]


def _completed_basis(top: torch.Tensor, bottom: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[top, an orthonormal basis of the rest, bottom] (N x N) and the mask of the given columns: ``bottom`` is
    first made orthogonal to ``top``, the middle comes from a complete QR of [top, bottom]."""
    n, k = top.shape
    bottom = bottom - top @ (top.T @ bottom)
    bottom = bottom / torch.linalg.vector_norm(bottom)
    q, _ = torch.linalg.qr(torch.cat([top, bottom], dim=1), mode="complete")
    vectors = torch.cat([top, q[:, k + 1:], bottom], dim=1)
    mask = torch.zeros(n, dtype=torch.bool, device=top.device)
    mask[:k] = True
    mask[-1] = True
    return vectors, mask


def _gram_exponents(tangent_map: TangentMap, tol: float, want_vectors: bool = True) -> FiniteTimeLyapunov | None:
    """The fast path of :func:`finite_time_lyapunov` when the spectrum is narrow (None when it does not apply).

    L_t = Y^T Y from the formed Y (row scales of T within GRAM_MAX_SPREAD nats; lower triangle only,
    :func:`_gram_lower`) and all its eigenvalues (absolute error ~ N eps lambda_max, so each exponent's error
    estimate is log(1 + N eps lambda_max / lambda_i) / (2t) plus the representation's), checked against the noise
    floor before any eigenvector is computed. ``want_vectors=False``: ``eigvalsh`` only (``vectors`` None).
    With vectors, the eigenvalues come from the tridiagonal reduction the vectors need too (:class:`_Tridiagonal`;
    the same values up to the rounding of another LAPACK driver) and eigenvectors only where the engine needs
    them: the chaotic ones (lambda_i - err > tol, ``chaotic_mask``; at least the top one) and the minimal one, by
    MRRR and the back-transformation. The other columns of ``vectors`` are an orthonormal basis of the rest of the
    non-chaotic subspace (``eigenvector_mask`` False there): the chaotic subspace is the span of the first, the
    non-chaotic subspace its complement, and the perturbation strategies take the top and the minimal
    eigenvector; uncertain directions are non-chaotic (``chaotic_mask``), so their eigenvectors are not needed.
    All N vectors by ``eigh`` when k >= N - 1, on an accelerator, or if LAPACK reports a failure. Returns None
    (the caller takes another path) if any eigenvalue is at the noise floor or the spread is too wide.
    """
    n, t = tangent_map.num_params, tangent_map.t
    w, rho, tt = tangent_map._w, tangent_map._rho, tangent_map._tt
    shift = 0.0
    if rho is None:
        ys = w
    else:
        finite = torch.isfinite(rho)
        if not bool(finite.all()):
            return None
        shift = float(rho.max())
        if shift - float(rho.min()) > GRAM_MAX_SPREAD:
            return None
        ys = w @ (torch.exp(rho - shift)[:, None] * tt)
    gram = _gram_lower(ys)  # lower triangle only
    if rho is not None:
        del ys
    tri = None
    if want_vectors and gram.device.type == "cpu":  # the eigenvalues from the reduction the vectors need too
        try:
            tri = _Tridiagonal(gram)
        except np.linalg.LinAlgError:
            pass
    lam = tri.eigenvalues() if tri is not None else torch.linalg.eigvalsh(gram)  # ascending; checked first
    top = float(lam[-1])
    if not top > 0.0 or float(lam[0]) <= 4.0 * n * EPS64 * top:
        return None
    lam = lam.flip(0)
    rel = tangent_map.relative_error
    err = (torch.log1p(n * EPS64 * top / lam) + 2.0 * math.log1p(rel)) / (2.0 * t)
    exponents = (torch.log(lam) + 2.0 * shift) / (2.0 * t)
    if not want_vectors:
        return FiniteTimeLyapunov(exponents, None, int(t), -math.inf, float(tol), "gram", err)
    k = max(1, int(((exponents - err) > tol).sum()))  # the chaotic ones (at least the top one)
    top_vecs = None  # all vectors by eigh: (almost) every vector wanted, an accelerator, or a LAPACK failure
    if k < n - 1 and tri is not None:
        try:
            top_vecs, bottom = tri.extreme_eigenvectors(k)
        except np.linalg.LinAlgError:
            pass
    del tri
    if top_vecs is None:
        vectors = torch.linalg.eigh(gram)[1].flip(1)
        return FiniteTimeLyapunov(exponents, vectors, int(t), -math.inf, float(tol), "gram", err)
    vectors, mask = _completed_basis(top_vecs, bottom)
    return FiniteTimeLyapunov(exponents, vectors, int(t), -math.inf, float(tol), "gram", err, mask)


FULL_RESOLVE_MARGIN = 64.0
"""``auto`` takes the SVD of the formed Y_t between the gram and graded paths when its smallest singular value is
at least this many times its rounding floor N eps sigma_max (a spread of up to ~23 nats in float64; each
exponent's error estimate then stays below log(1 + 1/64) / t)."""


def _resolved_full_exponents(tangent_map: TangentMap, tol: float, want_vectors: bool) -> FiniteTimeLyapunov | None:
    """``auto``'s middle path: the singular values of the formed, scaled Y_t (``svdvals``); None when the smallest
    is within FULL_RESOLVE_MARGIN of the floor N eps sigma_max (the graded path then resolves it); else their
    exponents with the representation's error added to the SVD's, log(1 + N eps sigma_max / sigma_i) / t. Resolves
    about twice the Gram matrix's spread (it never squares the condition number). With vectors: those the engine
    needs (:func:`_extreme_right_singular_vectors`), not a full SVD."""
    n, t = tangent_map.num_params, tangent_map.t
    y, log_scale = tangent_map.scaled()
    full = finite_time_exponents(y, t, log_scale, tol, vectors=False)
    if not t * float(full.exponents[0] - full.exponents[-1]) < _one_svd_range(n):
        return None
    errors = full.error_estimate + math.log1p(tangent_map.relative_error) / t
    full = replace(full, resolution=-math.inf, errors=errors)
    if not want_vectors:
        return full
    k = max(1, full.chaotic_dim)
    sigma_max = math.exp(t * float(full.exponents[0]) - log_scale)  # of the scaled y, from the svdvals above
    found = _extreme_right_singular_vectors(y, k, sigma_max) if k < n - 1 and y.device.type == "cpu" else None
    if found is None:  # all N vectors from one SVD
        return replace(full, vectors=_svd(y)[2].T.contiguous())
    vectors, mask = _completed_basis(*found)
    return replace(full, vectors=vectors, eigenvector_mask=mask)


def _one_svd_range(n: int) -> float:
    """The spread in nats, log(sigma_max / sigma_min), that one SVD of the formed N x N Y_t resolves for ``auto``:
    sigma_min above FULL_RESOLVE_MARGIN times the rounding floor N eps sigma_max."""
    return -math.log(FULL_RESOLVE_MARGIN * n * EPS64)


INVERSE_ITERATION_BLOCK = 16
"""Block size of the inverse iteration for the minimal right singular vector (rate (sigma_1 / sigma_17)^2)."""


def _extreme_right_singular_vectors(y: torch.Tensor, k: int, sigma_max: float
                                    ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The right singular vectors of y for its k largest singular values (columns, descending) and its smallest
    (N x 1), where the singular values are all resolved (``_resolved_full_exponents``, which passes y's largest
    singular value ``sigma_max``); None if LAPACK fails.

    The top k as eigenvectors of L = y^T y (:class:`_Tridiagonal`; their eigenvalues are >= the chaotic threshold,
    far above L's rounding floor N eps sigma_max^2, so L loses nothing there). The minimal one by block inverse
    iteration with R from a Householder QR of y (y = Q R, backward stable, so L = R^T R without forming it):
    x <- R^-1 R^-T x, Rayleigh-Ritz on R x, until the residual of R^T R is at the rounding level of the SVD,
    N eps sigma_max^2 (rate (sigma_1 / sigma_(p+1))^2 per sweep)."""
    n = y.shape[1]
    try:
        top = _Tridiagonal(_gram_lower(y)).eigenvectors([(n - k + 1, n)])
    except np.linalg.LinAlgError:
        return None
    r = torch.linalg.qr(y, mode="r")[1]
    gen = torch.Generator().manual_seed(_STRUCTURED_SEED)
    x = torch.randn(n, min(INVERSE_ITERATION_BLOCK, n), generator=gen, dtype=torch.float64, device=gen.device)
    x = torch.linalg.qr(x.to(y.device))[0]
    floor = 10.0 * n * EPS64 * sigma_max**2  # ||R||_2 = sigma_max(y)
    for _ in range(100):
        x = torch.linalg.solve_triangular(r.T, x, upper=False)
        x = torch.linalg.qr(torch.linalg.solve_triangular(r, x, upper=True))[0]
        rx = r @ x
        theta, rv = torch.linalg.eigh(rx.T @ rx)
        bottom = x @ rv[:, :1]
        residual = float(torch.linalg.vector_norm(r.T @ (r @ bottom) - theta[0] * bottom))
        if residual <= floor:
            break
    return top, bottom


def _snapshot_beyond_one_svd(tangent_map: TangentMap) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """The graded snapshot (rho, T~, relative error) when it proves that one SVD of the formed Y_t cannot resolve
    its spectrum (``auto`` then goes straight to the graded path, skipping ``_resolved_full_exponents``'s
    ``svdvals``, ~40 s for the MLP), else None.

    Y_t = Q diag(e^rho) T~ with Q orthonormal and unit rows T~, and for a square matrix sigma_max >= its largest
    row norm and sigma_min <= its smallest, so log(sigma_max / sigma_min) >= max rho - min rho. Once that exceeds
    the SVD's range -log(FULL_RESOLVE_MARGIN N eps) by log 4, the smallest computed singular value (true one plus
    the SVD's rounding, ~N eps sigma_max) lies below FULL_RESOLVE_MARGIN N eps sigma_max and the full path
    would return None: skipping it changes no result. The snapshot (a QR of the current block, ~9 s at
    N = 5,350) is only taken when the row scales of the last re-orthonormalisation already span that much."""
    rho = tangent_map._rho
    if rho is None:
        return None
    limit = _one_svd_range(tangent_map.num_params) + math.log(4.0)

    def spread(r: torch.Tensor) -> float:
        return math.inf if not bool(torch.isfinite(r).all()) else float(r.max() - r.min())

    if not spread(rho) > limit:
        return None
    snapshot = tangent_map.graded_snapshot()
    return snapshot if spread(snapshot[0]) > limit else None


def _graded_exponents(tangent_map: TangentMap, tol: float,
                      snapshot: tuple[torch.Tensor, torch.Tensor, float] | None = None) -> FiniteTimeLyapunov:
    """The graded path of :func:`finite_time_lyapunov` (checks done by the caller), from ``snapshot`` when one was
    taken (:meth:`TangentMap.graded_snapshot`)."""
    t = tangent_map.t
    rho, tt, rel = tangent_map.graded_snapshot() if snapshot is None else snapshot
    log_sigma, vectors, err, log_lost = graded_svd(rho, tt)
    log_lost = max(log_lost, tangent_map.censor)
    exponents = log_sigma / t
    if math.isfinite(tangent_map.censor):  # values below the censor bound may be killed-direction noise
        below = exponents < tangent_map.censor / t
        exponents[below] = -math.inf
        err = torch.where(below, math.inf, err)
    errors = (err + math.log1p(rel)) / t
    resolution = log_lost / t
    order = torch.argsort(exponents, descending=True, stable=True)
    return FiniteTimeLyapunov(exponents[order], vectors[:, order], int(t), resolution, float(tol), "graded",
                              errors[order])


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


# ----------------------------------------------------------------------------------------------------------
# The authors' numerics (issue 11 item 5): a dense float32 tangent map, for comparison with the exact engine


class Float32TangentMap:
    """Y_t = prod_s (I - lr H_s) of plain SGD (Theorem A.1) as the authors computed it: a dense N x N float32
    matrix updated by Y <- Y - lr H_s Y in float32, with the finite-time spectrum from a float32 ``eigh`` of
    L_t = Y_t^T Y_t, exponents (1 / 2t) log eig(L_t), and no error margin: exponent > tol counts as chaotic.

    Directions no step touched (the Hessians' common null space, most of the MLP's 5,350) have L_t = 1 exactly
    in exact arithmetic; here they carry float32 rounding noise of size ~ N eps32 ||L_t||, so about half of them
    come out "chaotic". Only for the comparison pages; the exact engine is :class:`TangentMap`.
    """

    def __init__(self, num_params: int, lr: float, momentum: float = 0.0,
                 device: torch.device | str | None = None) -> None:
        if momentum:
            raise ValueError("Float32TangentMap supports plain SGD only (momentum 0); use TangentMap")
        if not lr > 0.0:
            raise ValueError(f"lr must be positive, got {lr}")
        self.num_params, self.lr, self.t = int(num_params), float(lr), 0
        self._y = torch.eye(self.num_params, dtype=torch.float32, device=device)

    def step(self, h: HessianLike, lr: float | None = None) -> None:
        """Y <- Y - lr H Y in float32 (H dense, or V diag(lam) V^T from an eigenpair set)."""
        lr = self.lr if lr is None else float(lr)
        if isinstance(h, torch.Tensor):
            p = _dense(h, self.num_params).to(torch.float32) @ self._y
        else:
            lam, vecs = _pair(h, self.num_params)
            vecs = vecs.to(torch.float32)
            p = vecs @ (lam.to(torch.float32)[:, None] * (vecs.T @ self._y))
        self._y.add_(p, alpha=-lr)
        if not bool(torch.isfinite(self._y).all()):
            raise FloatingPointError("float32 tangent map: non-finite entries")
        self.t += 1

    def lyapunov(self, tol: float = 0.0, method: str = "float32", vectors: bool = True) -> FiniteTimeLyapunov:
        """Exponents (1 / 2t) log eig(Y^T Y) from a float32 ``eigh`` (descending; eig <= 0 gives -inf), every
        error estimate 0, so ``chaotic_dim`` counts exponents > tol exactly as the authors did. ``vectors`` is
        accepted for the engine's signature and ignored: the authors' one ``eigh`` gives the vectors anyway."""
        if self.t <= 0:
            raise ValueError("finite-time exponents need t >= 1 steps")
        lam, vecs = torch.linalg.eigh(self._y.T @ self._y)
        lam, vecs = lam.flip(0).to(torch.float64), vecs.flip(1).to(torch.float64)
        with torch.no_grad():
            exponents = torch.where(lam > 0, torch.log(lam.clamp(min=1e-300)) / (2 * self.t),
                                    torch.tensor(-math.inf, dtype=torch.float64, device=lam.device))
        return FiniteTimeLyapunov(exponents, vecs, self.t, -math.inf, float(tol), "float32",
                                  torch.zeros_like(exponents))

    def state_dict(self) -> dict:
        return {"format": "float32", "t": self.t, "y": self._y.clone(), "lr": self.lr}

    def load_state_dict(self, state: dict) -> None:
        self.t, self._y, self.lr = int(state["t"]), state["y"].clone(), float(state["lr"])
