"""Exact mini-batch Hessians and their full eigendecomposition (dense and low-rank), as one `Spectrum`.

The Hessian H = d^2 L_B / d theta^2 of the CURRENT mini-batch loss is what the paper eigendecomposes at
every step. Two exact methods share one interface, :func:`hessian_spectrum`:

* ``"dense"``: the N x N matrix via ``torch.func.hessian`` (forward-over-reverse), then ``torch.linalg.eigh``.
* ``"lowrank"``: a mini-batch Hessian has rank r << N (for the MLP at batch B, r <= B*(classes + 3*hidden)).
  An orthonormal basis Q of range(H) is grown from batched Hessian-vector products H @ Omega of Gaussian
  blocks until fresh probes certify that (I - Q Q^T) H Omega vanishes to working precision; then
  H = Q (Q^T H Q) Q^T exactly and the small r x r matrix is eigendecomposed. The zero eigenspace is the
  orthogonal complement of Q, exact instead of +-1e-7 float32 noise. Falls back to dense when r is not small.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.func import grad, hessian, jvp, vmap

METHODS = ("dense", "lowrank")
DEFAULT_RTOL = 1e-5


def hvp_fn(loss: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor
           ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Batched Hessian-vector products: V (N, k) -> H V (N, k), forward-over-reverse and vmapped."""
    grad_fn = grad(loss)

    def single(v: torch.Tensor) -> torch.Tensor:
        return jvp(grad_fn, (theta,), (v,))[1]

    batched = vmap(single, in_dims=1, out_dims=1)

    def apply(v: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        if v.ndim == 1:
            return single(v)
        return torch.cat([batched(v[:, i : i + chunk]) for i in range(0, v.shape[1], chunk)], dim=1)

    return apply


def dense_hessian(loss: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor) -> torch.Tensor:
    """The full Hessian matrix (N, N) of ``loss`` at ``theta`` (``torch.func.hessian``), symmetrised."""
    h = hessian(loss)(theta.detach())
    return 0.5 * (h + h.T)


@dataclass
class Spectrum:
    """Eigendecomposition H = V diag(lambda) V^T of a symmetric N x N matrix.

    ``eigenvalues`` (ascending) and ``eigenvectors`` (columns) cover the computed subspace: all N
    directions for the dense method, range(H) for the low-rank one, where the orthogonal complement is the
    exact zero eigenspace (``implicit_zeros`` directions). Eigenvalues with |lambda| <= ``tol`` count as
    zero; ``tol = rtol * max|lambda|`` unless given absolutely.
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    num_params: int
    tol: float
    method: str
    info: dict = field(default_factory=dict)

    @property
    def implicit_zeros(self) -> int:
        """Zero eigenvalues not stored explicitly (the complement of the computed subspace)."""
        return self.num_params - int(self.eigenvalues.numel())

    @property
    def n_pos(self) -> int:
        return int((self.eigenvalues > self.tol).sum())

    @property
    def n_neg(self) -> int:
        return int((self.eigenvalues < -self.tol).sum())

    @property
    def n_zero(self) -> int:
        return self.num_params - self.n_pos - self.n_neg

    @property
    def rank(self) -> int:
        """Numerical rank: eigenvalues with |lambda| > tol."""
        return self.n_pos + self.n_neg

    @property
    def max_eigenvalue(self) -> float:
        top = float(self.eigenvalues[-1]) if self.eigenvalues.numel() else 0.0
        return max(top, 0.0) if self.implicit_zeros else top

    @property
    def min_eigenvalue(self) -> float:
        bottom = float(self.eigenvalues[0]) if self.eigenvalues.numel() else 0.0
        return min(bottom, 0.0) if self.implicit_zeros else bottom

    def signed_eigenvalues(self) -> torch.Tensor:
        """Eigenvalues with |lambda| <= tol set to exactly 0."""
        lam = self.eigenvalues.clone()
        lam[lam.abs() <= self.tol] = 0.0
        return lam

    def n_above(self, threshold: float) -> int:
        """Number of eigenvalues strictly above ``threshold`` (Figure B.2.1 uses 2/lr)."""
        return int((self.eigenvalues > threshold).sum()) + (self.implicit_zeros if threshold < 0 else 0)

    def chaotic_mask(self, lr: float) -> torch.Tensor:
        """Theorem A.5, strict form: directions whose local exponent log|1 - lr*lambda| is > 0,
        i.e. lambda < -tol or lambda > 2/lr (zero eigenvalues are edge-chaotic, exponent exactly 0)."""
        lam = self.eigenvalues
        return (lam < -self.tol) | (lam > 2.0 / lr)

    def local_lyapunov_exponents(self, lr: float, include_implicit: bool = True) -> torch.Tensor:
        """Theorem A.5: LLE_i = log|1 - lr*lambda_i| (0 for the zero eigenspace), ascending in lambda."""
        lle = torch.log(torch.abs(1.0 - lr * self.signed_eigenvalues().double()))
        if include_implicit and self.implicit_zeros:
            lle = torch.cat([lle, torch.zeros(self.implicit_zeros, dtype=lle.dtype)])
        return lle

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v (v of shape (N,) or (N, k)) from the eigendecomposition."""
        vecs = self.eigenvectors.to(v.dtype)
        coeff = vecs.T @ v
        lam = self.eigenvalues.to(v.dtype)
        coeff = coeff * (lam[:, None] if v.ndim == 2 else lam)
        return vecs @ coeff

    def to_dense(self) -> torch.Tensor:
        """V diag(lambda) V^T as an N x N matrix."""
        v = self.eigenvectors
        return (v * self.eigenvalues) @ v.T

    def summary(self, lr: float | None = None) -> dict:
        out = {"n_pos": self.n_pos, "n_neg": self.n_neg, "n_zero": self.n_zero, "rank": self.rank,
               "max": self.max_eigenvalue, "min": self.min_eigenvalue, "tol": self.tol, "method": self.method}
        if lr is not None:
            out["n_above_2_over_lr"] = self.n_above(2.0 / lr)
            out["n_chaotic"] = int(self.chaotic_mask(lr).sum())
        return out


def _tolerance(eigenvalues: torch.Tensor, rtol: float, atol: float | None) -> float:
    if atol is not None:
        return float(atol)
    scale = float(eigenvalues.abs().max()) if eigenvalues.numel() else 0.0
    return rtol * scale


HESSIAN_LIMIT = float(torch.finfo(torch.float32).max) ** 0.5
"""max|H| above this (~1.8e19: its square overflows float32) means the run has blown up: not eigendecomposed."""


class HessianDiverged(ArithmeticError):
    """The Hessian cannot be eigendecomposed because the run has blown up: it is non-finite, astronomically large
    (max|H| > HESSIAN_LIMIT), or every eigensolver of the fallback chain failed on it. The training loop records
    the run as diverged at that step (the appendix's crashed runs) instead of raising."""


def _torch_eigh(dtype: torch.dtype) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    def solve(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.linalg.eigh(a.to(dtype))

    return solve


def _scipy_eigh(driver: str) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    def solve(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import scipy.linalg

        lam, vecs = scipy.linalg.eigh(a.detach().cpu().double().numpy(), driver=driver, check_finite=False)
        return torch.from_numpy(lam), torch.from_numpy(vecs)

    return solve


EIGENSOLVERS: dict[str, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {
    "torch.eigh": lambda a: torch.linalg.eigh(a),  # the working precision (float32 for the paper's models)
    "torch.eigh[float64]": _torch_eigh(torch.float64),  # torch's LAPACK (MKL on x86) in float64
    "scipy.evr": _scipy_eigh("evr"),  # another LAPACK build (scipy's OpenBLAS), MRRR
    "scipy.evd": _scipy_eigh("evd"),  # divide and conquer
    "scipy.ev": _scipy_eigh("ev"),  # implicit QL/QR: the slowest and most robust
}
"""The fallback chain of :func:`symmetric_eigh`, tried in order (tests replace entries to force failures)."""


def _power_of_two_scale(a: torch.Tensor) -> int:
    """e with max|a| * 2**-e in [0.5, 1) (0 for a zero matrix): rescaling by it is exact."""
    m = a.abs().max() if a.numel() else torch.zeros(())
    return int(torch.frexp(m.double())[1]) if float(m) > 0.0 else 0


def symmetric_eigh(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Eigendecomposition of a symmetric matrix that never raises for a solver's failure.

    The matrix is first rescaled by the power of two nearest max|a| (exact in floating point, keeps LAPACK off
    its overflow/underflow paths), then the solvers of :data:`EIGENSOLVERS` are tried in order until one returns
    finite eigenpairs: ``torch.linalg.eigh`` in the working precision, then in float64, then scipy's LAPACK
    drivers ``evr``, ``evd``, ``ev``. Either raising or silently returning NaN counts as a failure (float32
    ``eigh`` does both on CNN Hessians with thousands of near-zero eigenvalues, depending on the CPU's LAPACK
    and the thread count). Returns (eigenvalues ascending, eigenvectors, the solver's name) in ``a.dtype``.
    Raises :class:`HessianDiverged` when ``a`` is non-finite, max|a| > :data:`HESSIAN_LIMIT`, or every solver fails.
    """
    if not bool(torch.isfinite(a).all()):
        raise HessianDiverged("the Hessian has non-finite entries")
    e = _power_of_two_scale(a)
    if e and 2.0 ** e > HESSIAN_LIMIT:
        raise HessianDiverged(f"the Hessian is astronomically large (max|H| >= 2**{e - 1})")
    scaled = torch.ldexp(a, torch.tensor(-e, dtype=torch.int32)) if e else a
    failures = []
    for name, solve in EIGENSOLVERS.items():
        if name == "torch.eigh[float64]" and a.dtype == torch.float64:
            continue  # the first attempt already was float64
        try:
            lam, vecs = solve(scaled)
        except (RuntimeError, ValueError, ArithmeticError, MemoryError) as err:  # LinAlgError is a RuntimeError
            failures.append(f"{name}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            continue
        if bool(torch.isfinite(lam).all()) and bool(torch.isfinite(vecs).all()):
            lam = torch.ldexp(lam.to(a.dtype), torch.tensor(e, dtype=torch.int32)) if e else lam.to(a.dtype)
            return lam, vecs.to(a.dtype), name
        failures.append(f"{name}: returned non-finite eigenpairs")
    raise HessianDiverged("every eigensolver failed: " + "; ".join(failures))


def spectrum_from_matrix(h: torch.Tensor, rtol: float = DEFAULT_RTOL, atol: float | None = None,
                         method: str = "dense") -> Spectrum:
    """Eigendecompose a symmetric matrix (the dense reference) through the fallback chain of
    :func:`symmetric_eigh`; ``info["solver"]`` names the solver that succeeded."""
    lam, vecs, solver = symmetric_eigh(0.5 * (h + h.T))
    return Spectrum(lam, vecs, h.shape[0], _tolerance(lam, rtol, atol), method, {"solver": solver})


def _orthonormal_complement_block(y: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Project the columns of y off span(q) twice (classical Gram-Schmidt with reorthogonalisation)."""
    for _ in range(2):
        if q.shape[1]:
            y = y - q @ (q.T @ y)
    return y


def lowrank_spectrum(loss: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, *,
                     rtol: float = DEFAULT_RTOL, atol: float | None = None, block: int = 64,
                     range_rtol: float | None = None, max_rank_fraction: float = 0.4,
                     seed: int = 0, compute_dtype: torch.dtype | None = torch.float64,
                     hvp: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Spectrum:
    """Exact eigendecomposition of a low-rank Hessian from batched Hessian-vector products.

    Grows Q (orthonormal, N x r) with blocks Y = H Omega projected off Q until a full block of fresh
    Gaussian probes has residual ||(I - QQ^T) H omega|| <= range_rtol * ||H|| * ||omega|| (the certificate
    that range(H) is captured); then eigendecomposes Q^T H Q. Falls back to the dense method when r would
    exceed ``max_rank_fraction * N``. Products are computed in ``compute_dtype`` (float64 by default: the
    exact Hessian of the float32 model, with a certificate at 1e-13 instead of float32's 1e-4).
    """
    theta = theta.detach()
    if compute_dtype is not None:
        theta = theta.to(compute_dtype)
    n, dtype = theta.numel(), theta.dtype
    if range_rtol is None:
        range_rtol = 1e3 * torch.finfo(dtype).eps
    apply_h = hvp or hvp_fn(loss, theta)
    gen = torch.Generator().manual_seed(seed)
    q = torch.zeros(n, 0, dtype=dtype)
    h_norm = 0.0
    probes = 0
    max_rank = int(max_rank_fraction * n)
    while True:
        omega = torch.randn(n, block, generator=gen, dtype=torch.float64).to(dtype)
        y = apply_h(omega)
        probes += block
        if not bool(torch.isfinite(y).all()):
            raise HessianDiverged("Hessian-vector products are non-finite")
        h_norm = max(h_norm, float(torch.linalg.matrix_norm(y, ord=2)) / math.sqrt(n))
        if h_norm > HESSIAN_LIMIT:
            raise HessianDiverged(f"the Hessian is astronomically large (||H|| ~ {h_norm:.3g})")
        y = _orthonormal_complement_block(y, q)
        col_norms = y.norm(dim=0) / omega.norm(dim=0)
        if h_norm == 0.0 or float(col_norms.max()) <= range_rtol * h_norm:
            break
        try:
            uy, sy, _ = torch.linalg.svd(y, full_matrices=False)
        except RuntimeError:  # the SVD did not converge: the dense path has a fallback chain
            uy = None
        if uy is not None:
            keep = sy > range_rtol * h_norm * math.sqrt(n)
            q = torch.cat([q, _orthonormal_complement_block(uy[:, keep], q)], dim=1)
        if uy is None or q.shape[1] > max_rank:
            spec = spectrum_from_matrix(dense_hessian(loss, theta), rtol, atol, method="dense")
            spec.info.update(fallback=True, probes=probes)
            return spec
    if q.shape[1] == 0:
        lam = torch.zeros(0, dtype=dtype)
        return Spectrum(lam, q, n, 0.0 if atol is None else atol, "lowrank", {"probes": probes})
    hq = apply_h(q)
    t = q.T @ hq
    lam, w, solver = symmetric_eigh(0.5 * (t + t.T))
    vecs = q @ w
    return Spectrum(lam, vecs, n, _tolerance(lam, rtol, atol), "lowrank",
                    {"probes": probes + q.shape[1], "range_dim": q.shape[1], "fallback": False, "solver": solver})


def hessian_spectrum(loss: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor,
                     method: str = "lowrank", rtol: float = DEFAULT_RTOL, atol: float | None = None,
                     **kwargs) -> Spectrum:
    """The full eigendecomposition of the Hessian of ``loss`` at ``theta`` by ``method`` (dense|lowrank)."""
    if method == "dense":
        return spectrum_from_matrix(dense_hessian(loss, theta), rtol, atol)
    if method == "lowrank":
        return lowrank_spectrum(loss, theta, rtol=rtol, atol=atol, **kwargs)
    raise ValueError(f"unknown spectrum method {method!r}; valid methods are: {', '.join(METHODS)}")


def minibatch_spectrum(flat, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                       method: str = "lowrank", **kwargs) -> Spectrum:
    """Spectrum of the mini-batch loss L_B(theta) of a :class:`chaosnb.models.FlatModel`."""
    return hessian_spectrum(flat.loss_fn(x.to(theta.dtype), y), theta, method=method, **kwargs)
