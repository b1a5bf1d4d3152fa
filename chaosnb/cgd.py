"""Chaos-pruned gradient descent (CGD), the modified SGD of Theorem A.7.

Each step eigendecomposes the mini-batch Hessian H = V diag(lambda) V^T, prunes a set P of eigen-directions
and steps with the projected gradient g~ = P_keep g, P_keep = I - P_prune (eq. (44)/(46)). The Jacobian of
such a step, with the projector held fixed, is I - lr P_keep H (eq. (50)): eigenvalue 1 on every pruned
eigenvector and 1 - lr*lambda_i on every kept one (eqs. (51)-(55)).

Prune sets (a Hessian eigenvalue counts as zero when |lambda| <= ``spectrum.tol``; for a low-rank
:class:`~chaosnb.curvature.Spectrum` the orthogonal complement of its eigenvectors, the "implicit zeros",
is exactly zero as well):

* ``"chaotic"``: keep (1 - lr*lambda)^2 <= 1 (Theorem A.5), i.e. prune lambda < -tol and lambda > 2/lr;
  zero directions (implicit ones included) are kept;
* ``"neg"``: keep lambda > tol only (prunes negative AND zero directions, implicit ones included);
* ``"pos"``: keep lambda < -tol only (prunes positive and zero directions, implicit ones included).

Only the explicit eigenvectors are ever used (never an N x N matrix): g~ = g - V_P V_P^T g when the
implicit zero space is kept, g~ = V_K V_K^T g when it is pruned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from chaosnb.curvature import Spectrum

PRUNE_SETS = ("chaotic", "neg", "pos")
SELECTIONS = ("top_abs", "rand")


def _check_prune_set(prune_set: str) -> None:
    if prune_set not in PRUNE_SETS:
        raise ValueError(f"unknown prune_set {prune_set!r}; valid prune sets are: {', '.join(PRUNE_SETS)}")


def _check_select(select: str) -> None:
    if select not in SELECTIONS:
        raise ValueError(f"unknown select {select!r}; valid selections are: {', '.join(SELECTIONS)}")


def _check_k(k: int | None) -> None:
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
        raise ValueError(f"k must be None or a non-negative int, got {k!r}")


@dataclass(frozen=True, eq=False)
class PrunePlan:
    """Which eigen-directions of one Hessian spectrum a CGD step prunes (Theorem A.7, eq. (44)).

    ``pruned`` is a boolean mask over the explicit eigenpairs (``eigenvalues``, ``eigenvectors`` columns);
    ``prune_implicit`` says whether the implicit zero eigenspace (complement of the explicit eigenvectors,
    ``num_params - r`` dimensions) is pruned as well. P_prune = V_P V_P^T (+ the implicit projector).
    """

    prune_set: str
    lr: float
    k: int | None
    select: str
    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    pruned: torch.Tensor
    prune_implicit: bool
    num_params: int
    tol: float

    @property
    def kept(self) -> torch.Tensor:
        """Boolean mask of the kept explicit eigenpairs."""
        return ~self.pruned

    @property
    def implicit_zeros(self) -> int:
        return self.num_params - int(self.eigenvalues.numel())

    @property
    def n_pruned(self) -> int:
        """Dimension of the pruned subspace (implicit zero directions included)."""
        return int(self.pruned.sum()) + (self.implicit_zeros if self.prune_implicit else 0)

    @property
    def n_kept(self) -> int:
        """Dimension of the kept subspace (implicit zero directions included)."""
        return self.num_params - self.n_pruned

    @property
    def pruned_eigenvalues(self) -> torch.Tensor:
        return self.eigenvalues[self.pruned]

    @property
    def pruned_vectors(self) -> torch.Tensor:
        """Explicit pruned eigenvectors V_P (N x |P|)."""
        return self.eigenvectors[:, self.pruned]

    @property
    def kept_vectors(self) -> torch.Tensor:
        """Explicit kept eigenvectors V_K (N x |K|)."""
        return self.eigenvectors[:, self.kept]

    def _use_keep_form(self) -> bool:
        # P_keep = V_K V_K^T is only complete when no kept direction is implicit.
        if self.prune_implicit:
            return True
        return self.implicit_zeros == 0 and int(self.kept.sum()) < int(self.pruned.sum())

    def keep(self, v: torch.Tensor) -> torch.Tensor:
        """P_keep v for v of shape (N,) or (N, m), from the explicit eigenvectors only."""
        dtype = torch.promote_types(v.dtype, self.eigenvectors.dtype)
        vecs = self.eigenvectors.to(device=v.device, dtype=dtype)
        w = v.to(vecs.dtype)
        if self._use_keep_form():
            vk = vecs[:, self.kept.to(v.device)]
            out = vk @ (vk.T @ w)
        else:
            vp = vecs[:, self.pruned.to(v.device)]
            out = w - vp @ (vp.T @ w)
        return out.to(v.dtype)

    def prune(self, v: torch.Tensor) -> torch.Tensor:
        """P_prune v = v - P_keep v."""
        return v - self.keep(v)

    def effective_hessian(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenpairs (lambda_K, V_K) of P_keep H = V_K diag(lambda_K) V_K^T (kept explicit directions).

        The CGD step's Jacobian is I - lr P_keep H (eq. (50)); a tangent map applies it as
        Y <- Y - lr V_K (lambda_K * (V_K^T Y)). Implicit zero directions contribute nothing to P_keep H.
        """
        return self.eigenvalues[self.kept], self.eigenvectors[:, self.kept]

    def jacobian_matvec(self, y: torch.Tensor) -> torch.Tensor:
        """(I - lr P_keep H) y for y of shape (N,) or (N, m) (plain-SGD-style step, eq. (50))."""
        lam, vk = self.effective_hessian()
        vk = vk.to(y.dtype)
        coeff = vk.T @ y
        coeff = coeff * (lam.to(y.dtype)[:, None] if y.ndim == 2 else lam.to(y.dtype))
        return y - self.lr * (vk @ coeff)


def prune_set_mask(eigenvalues: torch.Tensor, tol: float, lr: float, prune_set: str) -> torch.Tensor:
    """Boolean mask of the explicit eigenvalues in ``prune_set`` (see the module docstring)."""
    _check_prune_set(prune_set)
    lam = eigenvalues
    if prune_set == "chaotic":
        return (lam < -tol) | (lam > 2.0 / lr)
    if prune_set == "neg":
        return lam <= tol
    return lam >= -tol


def prune_plan(spectrum: Spectrum, lr: float, prune_set: str, k: int | None = None, select: str = "top_abs",
               generator: torch.Generator | None = None) -> PrunePlan:
    """The pruning plan of one CGD step (Theorem A.7).

    Without ``k`` the whole ``prune_set`` is pruned (for ``neg``/``pos`` including the implicit zero
    eigenspace of a low-rank spectrum). With ``k`` only ``min(k, eligible)`` directions are pruned: the
    ``k`` largest |lambda| of the set (``select="top_abs"``) or ``k`` drawn uniformly without replacement
    with ``generator`` (``select="rand"``). Only EXPLICIT eigenvectors are eligible for k-selection: the
    implicit zero space of a low-rank spectrum is never pruned when ``k`` is given (a dense spectrum carries
    its zero directions explicitly, so there they are eligible).
    """
    _check_prune_set(prune_set)
    _check_select(select)
    _check_k(k)
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    lam = spectrum.eigenvalues
    in_set = prune_set_mask(lam, spectrum.tol, lr, prune_set)
    prune_implicit = prune_set in ("neg", "pos") and spectrum.implicit_zeros > 0
    if k is not None:
        prune_implicit = False
        candidates = torch.nonzero(in_set).flatten()
        n = min(k, int(candidates.numel()))
        if select == "top_abs":
            order = torch.argsort(lam[candidates].abs(), descending=True, stable=True)
        else:
            order = torch.randperm(int(candidates.numel()), generator=generator,
                                   device=generator.device if generator is not None else None)
        chosen = candidates[order[:n].to(candidates.device)]
        in_set = torch.zeros_like(in_set)
        in_set[chosen] = True
    return PrunePlan(prune_set, float(lr), k, select, lam, spectrum.eigenvectors, in_set, prune_implicit,
                     spectrum.num_params, float(spectrum.tol))


def pruned_gradient(grad: torch.Tensor, plan: PrunePlan, noise_std: float = 0.0,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """g~ = P_keep g (eq. (44)); with ``noise_std > 0``, g~ = P_keep g + P_prune z, z ~ N(0, noise_std^2 I_N).

    Pure tensor algebra in ``grad`` (no data-dependent control flow), so ``torch.func`` transforms apply
    with the plan held fixed. ``z`` is drawn in float64 with ``generator`` and cast to ``grad.dtype``.
    """
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std!r}")
    if grad.shape[0] != plan.num_params:
        raise ValueError(f"grad has {grad.shape[0]} entries, the plan's spectrum {plan.num_params}")
    out = plan.keep(grad)
    if noise_std > 0:
        z = torch.randn(grad.shape, generator=generator, dtype=torch.float64,
                        device=generator.device if generator is not None else None).to(grad.dtype) * noise_std
        out = out + plan.prune(z.to(grad.device))
    return out


class CGD(torch.optim.Optimizer):
    """SGD/momentum with the chaos-pruned gradient of Theorem A.7.

    ``step(spectrum)`` flattens every parameter's ``.grad`` in parameter order (the order of
    :class:`chaosnb.models.FlatModel` when built from ``module.parameters()``); from step ``prune_start``
    on, replaces it by ``pruned_gradient(g, prune_plan(spectrum, lr, ...))``; then applies the ordinary
    update buf <- momentum*buf + g~, p <- p - lr*buf (``torch.optim.SGD`` with dampening 0, no Nesterov,
    no weight decay). A parameter whose ``.grad`` is None counts as a zero gradient and is still updated
    (the projection mixes coordinates). The step counter and the generator state (a uint8 tensor) live in
    the state of the first parameter, so ``state_dict()``/``load_state_dict()`` resume identically.
    ``last_plan`` is the plan of the latest step (None on unpruned steps) for the tangent map
    (``last_plan.effective_hessian()``).
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], lr: float, momentum: float = 0.0,
                 prune_set: str = "chaotic", k: int | None = None, select: str = "top_abs",
                 prune_start: int = 0, noise_std: float = 0.0, seed: int = 0):
        _check_prune_set(prune_set)
        _check_select(select)
        _check_k(k)
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        if momentum < 0:
            raise ValueError(f"momentum must be >= 0, got {momentum!r}")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std!r}")
        if isinstance(prune_start, bool) or not isinstance(prune_start, int) or prune_start < 0:
            raise ValueError(f"prune_start must be a non-negative int, got {prune_start!r}")
        defaults = dict(lr=lr, momentum=momentum, prune_set=prune_set, k=k, select=select,
                        prune_start=prune_start, noise_std=noise_std)
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("CGD needs exactly one parameter group (it projects the flat gradient of all)")
        self._generator = torch.Generator().manual_seed(seed)
        first = self.state[self._params()[0]]
        first["step"] = 0
        first["rng_state"] = self._generator.get_state()
        self.last_plan: PrunePlan | None = None

    def _params(self) -> list[torch.Tensor]:
        return list(self.param_groups[0]["params"])

    @property
    def step_count(self) -> int:
        """Number of steps taken so far."""
        return int(self.state[self._params()[0]]["step"])

    @torch.no_grad()
    def step(self, spectrum: Spectrum | None = None,
             closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        """One CGD step; ``spectrum`` is the Hessian spectrum at the current parameters (required once
        ``step_count >= prune_start``)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        params = self._params()
        first = self.state[params[0]]
        step = int(first["step"])
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        self.last_plan = None
        if step >= group["prune_start"]:
            if spectrum is None:
                raise ValueError(f"CGD step {step} >= prune_start={group['prune_start']} needs the Hessian "
                                 "spectrum at the current parameters: call step(spectrum)")
            flat = torch.cat([g.reshape(-1) for g in grads])
            if spectrum.num_params != flat.numel():
                raise ValueError(f"spectrum has {spectrum.num_params} parameters, "
                                 f"the optimiser {flat.numel()}")
            self._generator.set_state(first["rng_state"].to(torch.uint8).cpu())
            plan = prune_plan(spectrum, group["lr"], group["prune_set"], group["k"], group["select"],
                              self._generator)
            flat = pruned_gradient(flat, plan, group["noise_std"], self._generator)
            first["rng_state"] = self._generator.get_state()
            self.last_plan = plan
            grads, offset = [], 0
            for p in params:
                grads.append(flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        lr, momentum = group["lr"], group["momentum"]
        for p, g in zip(params, grads, strict=True):
            if momentum != 0:
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = g.detach().clone()
                    state["momentum_buffer"] = buf
                else:
                    buf.mul_(momentum).add_(g, alpha=1)
                g = buf
            p.add_(g, alpha=-lr)
        first["step"] = step + 1
        return loss
