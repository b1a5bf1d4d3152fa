"""Exact mini-batch Hessians and their full eigendecomposition (dense and low-rank), as one `Spectrum`.

The Hessian H = d^2 L_B / d theta^2 of the CURRENT mini-batch loss is what the paper eigendecomposes at
every step. Two exact methods share one interface, :func:`hessian_spectrum`:

* ``"dense"``: the N x N matrix as the Jacobian of the gradient (``jacrev(grad)``, reverse-over-reverse), then the
  eigensolver chain of :func:`symmetric_eigh`.
* ``"lowrank"``: a mini-batch Hessian has rank r << N (for the MLP at batch B, r <= B*(classes + 3*hidden)).
  One pass of batched Hessian-vector products Y = H Omega of Gaussian blocks grows an orthonormal basis Q of
  range(H) until a block no longer fills up; H = Q M Q^T with M the least-squares solution of
  Q^T Y = M Q^T Omega (no product H Q is taken again), and the small r x r matrix M is eigendecomposed. Fresh
  probes check ||(H - Q M Q^T) omega|| a posteriori. For the MLP everything but the products runs in the
  390-dimensional :class:`InputSubspace` that holds range(H). The zero eigenspace is the orthogonal complement
  of Q, exact instead of +-1e-7 float32 noise. Falls back to dense when r is not small or the check fails.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.func import grad, jacrev, vjp, vmap

from chaosnb import one_hidden_layer
from chaosnb.multilinear import affine_indices, closed_form_hessian
from chaosnb.piecewise_linear import is_piecewise_linear, layer_blocks, piecewise_linear_hessian, subspace_hessian

METHODS = ("dense", "lowrank")
DEFAULT_RTOL = 1e-5


def hvp_fn(loss: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor
           ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Batched Hessian-vector products: V (N, k) -> H V (N, k), reverse-over-reverse and vmapped.

    H v = (d grad L)^T v since H is symmetric: the forward pass and the gradient are computed once here and each
    product is one vjp through the gradient (~30% cheaper than forward-over-reverse jvp for the paper's MLP,
    ~10% for the CNN: neither the forward nor the first backward pass is repeated).
    """
    _, pullback = vjp(grad(loss), theta)

    def single(v: torch.Tensor) -> torch.Tensor:
        return pullback(v)[0]

    batched = vmap(single, in_dims=1, out_dims=1)

    def apply(v: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        if v.ndim == 1:
            return single(v)
        if v.shape[1] <= chunk:
            return batched(v)
        return torch.cat([batched(v[:, i : i + chunk]) for i in range(0, v.shape[1], chunk)], dim=1)

    return apply


def dense_hessian(loss: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor) -> torch.Tensor:
    """The full Hessian matrix (N, N) of ``loss`` at ``theta``, symmetrised.

    Reverse-over-reverse (``jacrev(grad(loss))``): as exact as ``torch.func.hessian``'s forward-over-reverse (equal
    to 2e-16 on the test zoo), faster here (0.68x / 0.77x the time for the MLP / CNN), and it avoids the forward-mode
    decompositions whose import calls the deprecated ``torch.jit.script`` in every worker."""
    h = jacrev(grad(loss))(theta.detach())
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
            lle = torch.cat([lle, torch.zeros(self.implicit_zeros, dtype=lle.dtype, device=lle.device)])
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
        return torch.from_numpy(lam).to(a.device), torch.from_numpy(vecs).to(a.device)

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
    m = a.abs().max() if a.numel() else torch.zeros((), device=a.device)
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
    scaled = torch.ldexp(a, torch.tensor(-e, dtype=torch.int32, device=a.device)) if e else a
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
            lam = (torch.ldexp(lam.to(a.dtype), torch.tensor(e, dtype=torch.int32, device=a.device)) if e
                   else lam.to(a.dtype))
            return lam, vecs.to(a.dtype), name
        failures.append(f"{name}: returned non-finite eigenpairs")
    raise HessianDiverged("every eigensolver failed: " + "; ".join(failures))


def spectrum_from_matrix(h: torch.Tensor, rtol: float = DEFAULT_RTOL, atol: float | None = None,
                         method: str = "dense") -> Spectrum:
    """Eigendecompose a symmetric matrix (the dense reference) through the fallback chain of
    :func:`symmetric_eigh`; ``info["solver"]`` names the solver that succeeded."""
    lam, vecs, solver = symmetric_eigh(0.5 * (h + h.T))
    return Spectrum(lam, vecs, h.shape[0], _tolerance(lam, rtol, atol), method, {"solver": solver})


def _project_off(y: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """(I - Q Q^T) y for orthonormal Q (one classical Gram-Schmidt pass)."""
    return y - q @ (q.T @ y) if q.shape[1] else y


def _extend_range_basis(q: torch.Tensor, y: torch.Tensor, threshold: float) -> torch.Tensor:
    """Q extended by orthonormal columns spanning (I - Q Q^T) y down to singular values ``threshold``.

    Rank-revealing block Gram-Schmidt: y is projected off Q, factored y = Q_y R (Householder QR) and
    R = U S V^T (small SVD: S are the singular values of y); Q_y U[:, S > threshold] is kept, projected off Q
    once more and re-orthonormalised (a kept direction with a small singular value s_i carries components
    along Q of up to eps * s_max / s_i from the first projection; this second pass removes them).
    """
    qy, r = torch.linalg.qr(_project_off(y, q))
    u, sv, _ = torch.linalg.svd(r)
    new = qy @ u[:, sv > threshold]
    if new.shape[1]:
        new = torch.linalg.qr(_project_off(new, q)).Q
    return torch.cat([q, new], dim=1)


@functools.lru_cache(maxsize=32)
def _probe_block(n: int, width: int, seed: int, index: int, dtype: torch.dtype,
                 device: torch.device | None = None) -> torch.Tensor:
    """Gaussian probes N(0, I) of shape (n, width): block ``index`` of the stream seeded by ``seed``.

    Cached and shared, so never modify the result: the same seeded probes are used at every step. Drawn on the
    CPU (the same probes on every device), then moved to ``device``.
    """
    gen = torch.Generator().manual_seed((seed << 24) + index)
    return torch.randn(n, width, generator=gen, dtype=torch.float64, device=gen.device).to(device=device, dtype=dtype)


@dataclass(frozen=True)
class InputSubspace:
    """An orthonormal P (N x d) with range(H) in range(P), from the first layer being Linear on the data.

    For a first layer z = W x_b + c (W of shape rows x cols, stored row-major from ``offset`` in theta) the
    gradient of any loss is sum_b delta_b x_b^T in the W block, and so is every Hessian column (x_b does not
    depend on theta). So the W block of range(H) lies in R^rows (x) span{x_b}: P is the identity except
    that W's rows are expressed in an orthonormal basis X (cols x s) of span{x_b}; d = N - rows*(cols - s).
    For the paper's MLP at batch 8: d = 390 instead of N = 5,350.
    """

    n: int
    offset: int
    rows: int
    cols: int
    basis: torch.Tensor

    @property
    def dim(self) -> int:
        return self.n - self.rows * (self.cols - self.basis.shape[1])

    def _split(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        end = self.offset + self.rows * self.cols
        return v[: self.offset], v[self.offset : end].reshape(self.rows, self.cols, -1), v[end:]

    def down(self, v: torch.Tensor) -> torch.Tensor:
        """P^T v for v of shape (N, k) (one batched product into the output, no concatenation)."""
        head, w, tail = self._split(v)
        s, k = self.basis.shape[1], v.shape[1]
        out = torch.empty(self.dim, k, dtype=v.dtype, device=v.device)
        out[: self.offset] = head
        torch.bmm(self.basis.T.expand(self.rows, -1, -1), w, out=out[self.offset : self.offset + self.rows * s]
                  .view(self.rows, s, k))
        out[self.offset + self.rows * s :] = tail
        return out

    def up(self, z: torch.Tensor) -> torch.Tensor:
        """P z for z of shape (d, k)."""
        s = self.basis.shape[1]
        head, w, tail = z[: self.offset], z[self.offset : self.offset + self.rows * s], z[self.offset + self.rows * s :]
        return torch.cat([head, (self.basis @ w.reshape(self.rows, s, -1)).reshape(-1, z.shape[1]), tail])

    def add_up_(self, y: torch.Tensor, z: torch.Tensor, alpha: float) -> torch.Tensor:
        """y += alpha P z in place, for y (N, k) contiguous and z (d, k): the first layer's rows by one batched
        in-place product with the basis, never forming the N x k matrix P z."""
        s = self.basis.shape[1]
        end = self.offset + self.rows * self.cols
        k = y.shape[1]
        y[: self.offset].add_(z[: self.offset], alpha=alpha)
        block = y[self.offset : end].view(self.rows, self.cols, k)
        coords = z[self.offset : self.offset + self.rows * s].reshape(self.rows, s, k)
        block.baddbmm_(self.basis.expand(self.rows, -1, -1), coords, alpha=alpha)
        y[end:].add_(z[self.offset + self.rows * s :], alpha=alpha)
        return y

    def down_checked(self, v: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(P^T v, ||(I - P P^T) v||_F): the coordinates and how far v is from range(P) (only the W block can be)."""
        head, w, tail = self._split(v)
        c = self.basis.T @ w
        outside = float(torch.linalg.vector_norm(w - self.basis @ c))
        return torch.cat([head, c.reshape(-1, v.shape[1]), tail]), outside


def input_subspace(flat, x: torch.Tensor, dtype: torch.dtype = torch.float64) -> InputSubspace | None:
    """The :class:`InputSubspace` of a model whose first layer with parameters is ``nn.Linear`` preceded only by
    ``nn.Flatten`` (the paper's MLP), for the inputs ``x``; None for other models (the CNN)."""
    from torch import nn

    module = flat.module
    if not isinstance(module, nn.Sequential):
        return None
    for name, layer in module.named_children():
        if isinstance(layer, nn.Flatten):
            continue
        if not isinstance(layer, nn.Linear):
            return None
        spec = next((s for s in flat.specs if s.name == f"{name}.weight"), None)
        data = x.reshape(x.shape[0], -1).to(dtype)
        if spec is None or data.shape[1] != layer.in_features:
            return None
        u, sv, _ = torch.linalg.svd(data.T, full_matrices=False)
        keep = sv > torch.finfo(dtype).eps * max(data.shape) * (float(sv[0]) if sv.numel() else 0.0)
        return InputSubspace(flat.num_params, spec.offset, layer.out_features, layer.in_features, u[:, keep])
    return None


def lowrank_spectrum(loss: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, *,
                     rtol: float = DEFAULT_RTOL, atol: float | None = None, block: int = 64,
                     range_rtol: float | None = None, max_rank_fraction: float = 0.75, spare: int | None = None,
                     check_probes: int = 8, single_pass: bool = True, subspace: InputSubspace | None = None,
                     seed: int = 0, compute_dtype: torch.dtype | None = torch.float64,
                     hvp: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Spectrum:
    """Exact eigendecomposition of a low-rank Hessian from one pass of batched Hessian-vector products.

    Sketch: blocks Y = H Omega of Gaussian probes grow an orthonormal basis Q of range(H) (rank-revealing:
    singular values of the projected block above ``range_rtol`` times the RMS column norm of the products,
    ~ ||H||_F) until a block adds at most ``block - spare`` new directions (``spare`` defaults to
    min(8, block // 4)). Since H = Q M Q^T once range(H) is in span(Q), every product already taken satisfies
    Q^T Y = M (Q^T Omega): M (r x r) is their least-squares solution and no product H Q is taken again (single
    pass, Nystrom-type; Q^T Omega is a Gaussian r x K matrix, K >= r + spare, well conditioned).
    M = W diag(lambda) W^T by :func:`symmetric_eigh`, eigenvectors Q W. With a ``subspace`` P (range(H) in
    range(P), :class:`InputSubspace`) Q is built in P's d coordinates, so all orthogonalisation costs d
    instead of N (the MLP at batch 8: 390 instead of 5,350).

    Certificate (a posteriori, on ``check_probes`` fresh Gaussian probes omega_i used neither for Q nor M):
    ||(H - Q M Q^T) omega_i|| <= range_rtol * ||H||_2 * ||omega_i|| for all i, ||H||_2 = max|lambda|. By Halko,
    Martinsson & Tropp (2011, Lemma 4.1) ||H - Q M Q^T||_2 is at most 10 sqrt(2/pi) times the largest residual
    with probability >= 1 - 10^-check_probes. A failed check adds the probes as a block and grows on; the dense
    method is the fallback when the range exceeds ``max_rank_fraction * N`` or the check fails three times
    (``info["fallback"]``, ``info["reason"]``); a product outside range(P) drops the subspace.
    ``single_pass=False`` is the previous algorithm, kept for the benchmark: grow until a whole fresh block
    adds nothing, then compute H Q again for M = Q^T H Q.
    Products are computed in ``compute_dtype`` (float64 by default: the exact Hessian of the float32 model).
    """
    theta = theta.detach()
    if compute_dtype is not None:
        theta = theta.to(compute_dtype)
    n, dtype = theta.numel(), theta.dtype
    if spare is None:
        spare = min(8, block // 4)
    if block < 1 or not 0 <= spare < block or check_probes < 1:
        raise ValueError(f"need block >= 1, 0 <= spare < block and check_probes >= 1; got block={block}, "
                         f"spare={spare}, check_probes={check_probes}")
    if range_rtol is None:
        range_rtol = 1e3 * torch.finfo(dtype).eps
    if subspace is not None and subspace.n != n:
        raise ValueError(f"the subspace is for N = {subspace.n} parameters, theta has {n}")
    if not single_pass and subspace is not None:
        raise ValueError("single_pass=False (the previous algorithm) does not take a subspace")
    apply_h = hvp or hvp_fn(loss, theta)
    max_rank = int(max_rank_fraction * n)
    down = subspace.down if subspace is not None else (lambda v: v)
    up = subspace.up if subspace is not None else (lambda v: v)
    q = torch.zeros(n if subspace is None else subspace.dim, 0, dtype=dtype, device=theta.device)  # P's coordinates
    omegas: list[torch.Tensor] = []  # probe and product blocks, in P's coordinates
    ys: list[torch.Tensor] = []
    y_scale, probes, index, failed = 0.0, 0, 0, []

    def take(omega: torch.Tensor) -> torch.Tensor:
        nonlocal probes
        probes += omega.shape[1]
        return apply_h(omega)

    def fallback(reason: str) -> Spectrum:
        spec = spectrum_from_matrix(dense_hessian(loss, theta), rtol, atol, method="dense")
        spec.info.update(fallback=True, probes=probes, reason=reason)
        return spec

    def add(omega: torch.Tensor, y: torch.Tensor, check: bool) -> int | None:
        """Append a block; the number of new directions, None when (``check``) a product leaves range(P).

        The first block and each failed certificate's block are checked; the certificate catches the rest."""
        nonlocal q, y_scale
        norm = float(torch.linalg.matrix_norm(y))
        if not math.isfinite(norm):  # a NaN/inf entry, or entries beyond 1e154: either way blown up
            raise HessianDiverged("Hessian-vector products are non-finite")
        if subspace is None:
            yr, outside = y, 0.0
        else:
            yr, outside = subspace.down_checked(y) if check else (subspace.down(y), 0.0)
        if outside > range_rtol * norm:
            return None
        y_scale = max(y_scale, norm / math.sqrt(y.shape[1]))  # RMS of ||H omega||, ~ ||H||_F
        if y_scale > HESSIAN_LIMIT:
            raise HessianDiverged(f"the Hessian is astronomically large (||H||_F ~ {y_scale:.3g})")
        before = q.shape[1]
        q = _extend_range_basis(q, yr, range_rtol * y_scale)
        omegas.append(down(omega))
        ys.append(yr)
        return q.shape[1] - before

    def without_subspace(reason: str) -> Spectrum:
        spec = lowrank_spectrum(loss, theta, rtol=rtol, atol=atol, block=block, range_rtol=range_rtol,
                                max_rank_fraction=max_rank_fraction, spare=spare, check_probes=check_probes,
                                seed=seed, compute_dtype=None, hvp=apply_h)
        spec.info.update(subspace_dropped=reason, probes=spec.info["probes"] + probes)
        return spec

    while True:
        # grow Q until a block leaves at least `spare` of its probes without a new direction
        while True:
            omega = _probe_block(n, block, seed, index, dtype, theta.device)
            index += 1
            added = add(omega, take(omega), check=not omegas)
            if added is None:
                return without_subspace("a Hessian-vector product left the input subspace")
            if q.shape[1] > max_rank:
                return fallback(f"range dimension above max_rank_fraction * N = {max_rank}")
            if (added <= block - spare) if single_pass else added == 0:
                break
        r = q.shape[1]
        if r == 0:
            lam = torch.zeros(0, dtype=dtype, device=theta.device)
            return Spectrum(lam, torch.zeros(n, 0, dtype=dtype, device=theta.device), n,
                            0.0 if atol is None else atol, "lowrank",
                            {"probes": probes, "range_dim": 0, "fallback": False})
        if single_pass:  # Q^T Y = M Q^T Omega: K >= r + spare equations for each column of M
            qo = torch.cat([q.T @ o for o in omegas], dim=1)
            qy = torch.cat([q.T @ v for v in ys], dim=1)
            m = torch.linalg.lstsq(qo.T, qy.T).solution.T
        else:
            m = q.T @ take(q)
        lam, w, solver = symmetric_eigh(0.5 * (m + m.T))
        vecs = up(q @ w)
        info = {"probes": probes, "range_dim": r, "fallback": False, "solver": solver,
                "subspace_dim": None if subspace is None else subspace.dim}
        if not single_pass:
            return Spectrum(lam, vecs, n, _tolerance(lam, rtol, atol), "lowrank", info)
        omega = _probe_block(n, check_probes, seed, (1 << 20) + len(failed), dtype, theta.device)
        y = take(omega)
        resid = (y - vecs @ (lam[:, None] * (vecs.T @ omega))).norm(dim=0) / omega.norm(dim=0)
        h_norm = float(lam.abs().max())
        worst = float(resid.max()) / h_norm if h_norm > 0 else float(resid.max())
        if worst <= range_rtol:
            info.update(probes=probes, certificate=worst, checks_failed=len(failed))
            return Spectrum(lam, vecs, n, _tolerance(lam, rtol, atol), "lowrank", info)
        failed.append(worst)
        if len(failed) == 3:
            return fallback(f"the a posteriori check failed 3 times (relative residuals {failed})")
        if add(omega, y, check=True) is None:
            return without_subspace("a Hessian-vector product left the input subspace")


def hessian_spectrum(loss: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor,
                     method: str = "lowrank", rtol: float = DEFAULT_RTOL, atol: float | None = None,
                     **kwargs) -> Spectrum:
    """The full eigendecomposition of the Hessian of ``loss`` at ``theta`` by ``method`` (dense|lowrank)."""
    if method == "dense":
        return spectrum_from_matrix(dense_hessian(loss, theta), rtol, atol)
    if method == "lowrank":
        return lowrank_spectrum(loss, theta, rtol=rtol, atol=atol, **kwargs)
    raise ValueError(f"unknown spectrum method {method!r}; valid methods are: {', '.join(METHODS)}")


def subspace_spectrum(flat, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, subspace: InputSubspace, *,
                      rtol: float = DEFAULT_RTOL, atol: float | None = None, range_rtol: float | None = None,
                      compute_dtype: torch.dtype | None = torch.float64) -> Spectrum:
    """Exact low-rank spectrum of a mini-batch Hessian from the input subspace P, for a one-hidden-layer MLP (any
    activation) or a piecewise-linear network.

    H = P M P^T with M = P^T H P (d x d): in closed form for a one-hidden-layer MLP
    (:func:`chaosnb.one_hidden_layer.subspace_hessian`, no Hessian-vector product), else from d - n_max
    Hessian-vector products and one Gauss-Newton block (:func:`chaosnb.piecewise_linear.subspace_hessian`); no
    random probe, no certificate needed: the identity is exact). M = W diag(lambda) W^T by :func:`symmetric_eigh`;
    the pairs with |lambda| > ``range_rtol`` max|lambda| (default 1e3 eps, the sketch's range threshold) are kept
    as (lambda, P W), the rest of R^N is the implicit zero eigenspace. Deterministic; the same Spectrum fields as
    :func:`lowrank_spectrum` (``info["probes"]`` = the products taken)."""
    theta = theta.detach()
    if compute_dtype is not None:
        theta = theta.to(compute_dtype)
    dtype = theta.dtype
    if range_rtol is None:
        range_rtol = 1e3 * torch.finfo(dtype).eps
    if one_hidden_layer.layers(flat.module) is not None:  # closed form, no product
        m, products = one_hidden_layer.subspace_hessian(flat, theta, x.to(dtype), y, subspace), 0
        structure = "one hidden layer, input subspace, closed form"
    else:
        m, products = subspace_hessian(flat, theta, x.to(dtype), y, subspace)
        structure = "piecewise-linear, input subspace"
    if not bool(torch.isfinite(m).all()):
        raise HessianDiverged("the Hessian in the input subspace is non-finite")
    lam, coords, solver = _nonzero_eigenpairs(m, range_rtol)
    info = {"probes": products, "range_dim": lam.numel(), "fallback": False, "solver": solver,
            "subspace_dim": subspace.dim, "structure": structure,
            "subspace": subspace, "coords": coords}  # eigenvectors = P coords (the tangent map's factored step)
    return Spectrum(lam, subspace.up(coords), theta.numel(), _tolerance(lam, rtol, atol), "lowrank", info)


def _nonzero_eigenpairs(m: torch.Tensor, range_rtol: float) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(lambda, W, solver) of the symmetric ``m`` by :func:`symmetric_eigh`, keeping the pairs with
    |lambda| > range_rtol max|lambda| (the rest is the implicit zero eigenspace of an exact low-rank spectrum)."""
    lam, w, solver = symmetric_eigh(m)
    scale = float(lam.abs().max()) if lam.numel() else 0.0
    keep = lam.abs() > range_rtol * scale
    return lam[keep], w[:, keep].contiguous(), solver


def closed_form_spectrum(flat, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *,
                         rtol: float = DEFAULT_RTOL, atol: float | None = None, range_rtol: float | None = None,
                         compute_dtype: torch.dtype | None = torch.float64) -> Spectrum:
    """Exact low-rank spectrum of the mini-batch Hessian of a piecewise-linear network without an input subspace
    (the CNN): the full Hessian in closed form (:func:`chaosnb.multilinear.closed_form_hessian`, no
    Hessian-vector product) in ``compute_dtype``; every layer block whose rows have a clearly smaller range is
    deflated to it (:func:`layer_range_bases`, H = P (P^T H P) P^T), and P^T H P is eigendecomposed by
    :func:`symmetric_eigh`; the pairs with |lambda| > ``range_rtol`` max|lambda| (default 1e3 eps) are kept, the
    rest is the implicit zero eigenspace. ``info`` records each layer's kept dimension and P's."""
    theta = theta.detach()
    if compute_dtype is not None:
        theta = theta.to(compute_dtype)
    if range_rtol is None:
        range_rtol = 1e3 * torch.finfo(theta.dtype).eps
    h = closed_form_hessian(flat, theta, x.to(theta.dtype), y)
    scale = h.abs().max()  # NaN or inf when any entry is
    if not bool(torch.isfinite(scale)):
        raise HessianDiverged("the Hessian has non-finite entries")
    blocks = layer_blocks(flat)
    bases = layer_range_bases(h, blocks, range_rtol, scale=float(scale))
    m, up = _deflated(h, blocks, bases)
    lam, coords, solver = _nonzero_eigenpairs(m, range_rtol)
    info = {"probes": 0, "range_dim": lam.numel(), "fallback": False, "solver": solver,
            "structure": "piecewise-linear, closed form", "deflated_dim": m.shape[0],
            "layer_ranks": [size if q is None else q.shape[1] for (_, size), q in zip(blocks, bases, strict=True)]}
    return Spectrum(lam, up(coords), theta.numel(), _tolerance(lam, rtol, atol), "lowrank", info)


def layer_range_bases(h: torch.Tensor, blocks: list[tuple[int, int]], range_rtol: float, *,
                      min_size: int = 128, oversampling: int = 16, seed: int = 0,
                      scale: float | None = None) -> list[torch.Tensor | None]:
    """For each coordinate block (offset, size) of the symmetric ``h``: an orthonormal basis Q (size x r) of the
    range of its rows H[l, :] when that range is clearly smaller than the block, else None (keep the block).

    H = P (P^T H P) P^T exactly for P = blockdiag(Q_l or I) whenever every Q_l spans range(H[l, :]) (H v = 0 for
    every v in a block orthogonal to it). The range is sketched (Y = H[l, :] Omega, size / 2 + ``oversampling``
    seeded Gaussian columns, Y = Q R, the leading columns while |R_jj| > ``range_rtol`` max|R_jj|) and accepted only
    with a margin (rank <= columns - oversampling) and an a posteriori certificate, max|H[l, :] - Q Q^T H[l, :]| <=
    ``range_rtol`` max|H| (``scale``, computed when not given). A rank the QR misjudges costs speed, never
    exactness: too small fails the certificate (the block is kept), too large only adds zero eigenvalues. The
    CNN's last convolution (584 parameters) has rows of rank ~130-250."""
    scale = float(h.abs().max()) if scale is None else float(scale)
    bases: list[torch.Tensor | None] = []
    for index, (start, size) in enumerate(blocks):
        if size < min_size or scale == 0.0:
            bases.append(None)
            continue
        rows = h[start:start + size]
        width = size // 2 + oversampling
        omega = _probe_block(h.shape[0], width, seed, index, h.dtype, h.device)
        q, r = torch.linalg.qr(rows @ omega)
        d = torch.diagonal(r).abs()
        top = float(d.max()) if d.numel() else 0.0
        small = torch.nonzero(d <= range_rtol * top).flatten()
        rank = int(small[0]) if small.numel() else int(d.numel())
        if rank > width - oversampling:
            bases.append(None)
            continue
        q = q[:, :rank]
        residual = rows - q @ (q.T @ rows)
        bases.append(q if float(residual.abs().max()) <= range_rtol * scale else None)
    return bases


def _deflated(h: torch.Tensor, blocks: list[tuple[int, int]], bases: list[torch.Tensor | None]
              ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """(P^T H P, coords -> P coords) for P = blockdiag(Q_l or I) over ``blocks`` (which tile the coordinates in
    order) and their ``layer_range_bases``; P = I when no block is deflated."""
    if all(q is None for q in bases):
        return h, lambda coords: coords
    parts = list(zip(blocks, bases, strict=True))
    hp = torch.cat([h[:, start:start + size] if q is None else h[:, start:start + size] @ q
                    for (start, size), q in parts], dim=1)  # H P
    m = torch.cat([hp[start:start + size] if q is None else q.T @ hp[start:start + size]
                   for (start, size), q in parts], dim=0)  # P^T H P
    widths = [size if q is None else q.shape[1] for (_, size), q in parts]

    def up(coords: torch.Tensor) -> torch.Tensor:
        out = coords.new_empty(h.shape[0], coords.shape[1])
        offset = 0
        for ((start, size), q), width in zip(parts, widths, strict=True):
            c = coords[offset:offset + width]
            out[start:start + size] = c if q is None else q @ c
            offset += width
        return out

    return 0.5 * (m + m.T), up


def minibatch_spectrum(flat, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                       method: str = "lowrank", **kwargs) -> Spectrum:
    """Spectrum of the mini-batch loss L_B(theta) of a :class:`chaosnb.models.FlatModel`; the low-rank method
    works in the model's :func:`input_subspace` when it has one (the MLP): for a one-hidden-layer MLP or a
    piecewise-linear network it eigendecomposes the exact P^T H P (:func:`subspace_spectrum`), otherwise it
    sketches range(H) inside P (:func:`lowrank_spectrum`); a piecewise-linear network without an input subspace
    (the CNN) gets its exact Hessian in closed form, in float64 (:func:`closed_form_spectrum`). The dense method
    builds the Hessian of a piecewise-linear network in closed form in theta's dtype
    (:mod:`chaosnb.multilinear`; from about half its columns, :mod:`chaosnb.piecewise_linear`, for the layouts
    the closed form does not cover)."""
    if method == "lowrank" and kwargs.get("single_pass", True) and "subspace" not in kwargs:
        kwargs["subspace"] = input_subspace(flat, x, kwargs.get("compute_dtype", torch.float64) or theta.dtype)
        exact = is_piecewise_linear(flat.module) or one_hidden_layer.layers(flat.module) is not None
        options = {"rtol": kwargs.get("rtol", DEFAULT_RTOL), "atol": kwargs.get("atol"),
                   "range_rtol": kwargs.get("range_rtol"), "compute_dtype": kwargs.get("compute_dtype", torch.float64)}
        if kwargs["subspace"] is not None and exact and "hvp" not in kwargs:
            return subspace_spectrum(flat, theta, x, y, kwargs["subspace"], **options)
        if kwargs["subspace"] is None and affine_indices(flat.module) is not None and "hvp" not in kwargs:
            return closed_form_spectrum(flat, theta, x, y, **options)
    if method == "dense" and is_piecewise_linear(flat.module):
        closed = affine_indices(flat.module) is not None
        h = (closed_form_hessian if closed else piecewise_linear_hessian)(flat, theta, x, y)
        return spectrum_from_matrix(h, kwargs.get("rtol", DEFAULT_RTOL), kwargs.get("atol"))
    return hessian_spectrum(flat.loss_fn(x.to(theta.dtype), y), theta, method=method, **kwargs)
