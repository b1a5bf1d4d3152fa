"""Perturbation strategies of the distance experiments (main-text Figure 3, appendix C.3/C.4).

Starting points theta_0 + eps * d/|d| with d built from the eigenpairs of the finite-time Lyapunov matrix
L_T = Y_T^T Y_T of a reference run. A direction is chaotic when its L_T eigenvalue is > 1, i.e. its
finite-time exponent (1/(2T)) log eig(L_T) is > 0; the chaotic subspace V_chaotic is spanned by those
eigenvectors and V_non-chaotic by the rest.

Spectrum API: pass either ``eigenvalues`` (of L_T, chaotic iff > 1 + tol) or, as a keyword,
``exponents`` (finite-time Lyapunov exponents, chaotic iff > tol), together with the matching orthonormal
``eigenvectors`` as columns (N x r). The two are interchangeable: exponent = log(eigenvalue)/(2T) is
monotone, so the extreme eigenvectors and the subspaces coincide. ``tol`` (default 0, the paper's strict
threshold) guards against L_T eigenvalues that are 1 up to rounding (directions the dynamics never touched).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

STRATEGIES = ("max_chaotic", "chaotic", "random", "non_chaotic", "max_non_chaotic")


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; valid strategies are: {', '.join(STRATEGIES)}")


def _values(eigenvalues: torch.Tensor | None, exponents: torch.Tensor | None) -> tuple[torch.Tensor, float]:
    """(values, chaos threshold) from exactly one of eigenvalues (threshold 1) / exponents (threshold 0)."""
    if (eigenvalues is None) == (exponents is None):
        raise ValueError("give exactly one of eigenvalues= (of L_T, chaotic iff > 1) or exponents= "
                         "(finite-time Lyapunov exponents, chaotic iff > 0)")
    values = eigenvalues if eigenvalues is not None else exponents
    # a tensor keeps its device (torch.as_tensor would move it to torch's default device)
    return (values if isinstance(values, torch.Tensor) else torch.as_tensor(values)), (
        1.0 if eigenvalues is not None else 0.0)


def chaotic_mask(eigenvalues: torch.Tensor | None = None, *, exponents: torch.Tensor | None = None,
                 tol: float = 0.0) -> torch.Tensor:
    """Boolean mask of the chaotic directions: L_T eigenvalue > 1 + tol, or exponent > tol."""
    values, threshold = _values(eigenvalues, exponents)
    return values > threshold + tol


def _unit(d: torch.Tensor) -> torch.Tensor:
    norm = torch.linalg.vector_norm(d)
    if not norm > 0:
        raise ValueError("perturbation direction has zero norm")
    return d / norm


def _gaussian(n: int, generator: torch.Generator | None, dtype: torch.dtype) -> torch.Tensor:
    # Drawn in float64 so a seed gives the same direction whatever the working dtype.
    return torch.randn(n, generator=generator, dtype=torch.float64,
                       device=generator.device if generator is not None else None).to(dtype)


def perturbation_direction(strategy: str, eigenvalues: torch.Tensor | None = None,
                           eigenvectors: torch.Tensor | None = None,
                           generator: torch.Generator | None = None, *,
                           exponents: torch.Tensor | None = None, tol: float = 0.0) -> torch.Tensor:
    """Unit direction d/|d| of one perturbation strategy (paper README, "Perturbation experiments").

    * ``max_chaotic``: eigenvector of the largest eigenvalue (exponent);
    * ``chaotic``: V_chaotic z, z ~ N(0, I);
    * ``random``: d ~ N(0, I_N) in parameter space (N = ``eigenvectors.shape[0]``);
    * ``non_chaotic``: V_non-chaotic z, z ~ N(0, I);
    * ``max_non_chaotic``: eigenvector of the smallest eigenvalue (exponent).

    The two ``max_*`` strategies are the extreme eigenvectors (sign as returned by the eigensolver) whatever
    the threshold says; ``chaotic``/``non_chaotic`` raise ValueError when their subspace is empty.
    Randomness comes only from ``generator`` (the global RNG if None).
    """
    _check_strategy(strategy)
    if eigenvectors is None:
        raise ValueError("eigenvectors (orthonormal columns, N x r) are required")
    values, threshold = _values(eigenvalues, exponents)
    if eigenvectors.ndim != 2 or eigenvectors.shape[1] != values.numel():
        raise ValueError(f"eigenvectors must be N x r with r = {values.numel()} columns, "
                         f"got shape {tuple(eigenvectors.shape)}")
    dtype = eigenvectors.dtype
    if strategy == "max_chaotic":
        return _unit(eigenvectors[:, int(torch.argmax(values))].clone())
    if strategy == "max_non_chaotic":
        return _unit(eigenvectors[:, int(torch.argmin(values))].clone())
    if strategy == "random":
        return _unit(_gaussian(eigenvectors.shape[0], generator, dtype).to(eigenvectors.device))
    mask = values > threshold + tol
    if strategy == "non_chaotic":
        mask = ~mask
    basis = eigenvectors[:, mask.to(eigenvectors.device)]
    if basis.shape[1] == 0:
        quantity = "L_T eigenvalue" if eigenvalues is not None else "exponent"
        cond = ">" if strategy == "chaotic" else "<="
        raise ValueError(f"strategy {strategy!r} needs a non-empty {strategy.replace('_', '-')} subspace, "
                         f"but no direction has {quantity} {cond} {threshold} + tol (tol={tol})")
    z = _gaussian(basis.shape[1], generator, dtype).to(eigenvectors.device)
    return _unit(basis @ z)


def perturb(theta0: torch.Tensor, direction: torch.Tensor, eps: float) -> torch.Tensor:
    """theta0 + eps * d/|d| (a new tensor)."""
    if direction.shape != theta0.shape:
        raise ValueError(f"direction shape {tuple(direction.shape)} != theta0 shape {tuple(theta0.shape)}")
    return theta0 + eps * _unit(direction.to(theta0.dtype))


def strategy_seed(seed: int, strategy: str) -> int:
    """Seed of one strategy's generator: seed * 5 + position in STRATEGIES (distinct per strategy)."""
    _check_strategy(strategy)
    return seed * len(STRATEGIES) + STRATEGIES.index(strategy)


def perturbed_initialisations(theta0: torch.Tensor, eigenvalues: torch.Tensor | None = None,
                              eigenvectors: torch.Tensor | None = None, eps: float = 0.1,
                              strategies: Sequence[str] = STRATEGIES, seed: int = 42, *,
                              exponents: torch.Tensor | None = None,
                              tol: float = 0.0) -> dict[str, torch.Tensor]:
    """{strategy: theta0 + eps * d/|d|} for each strategy (stage 2 of the distance experiments).

    Each strategy draws from its own generator seeded with :func:`strategy_seed`, so its direction depends
    only on ``seed`` and the spectrum, not on which other strategies are requested or their order.
    """
    for s in strategies:
        _check_strategy(s)
    out: dict[str, torch.Tensor] = {}
    for s in strategies:
        gen = torch.Generator().manual_seed(strategy_seed(seed, s))
        d = perturbation_direction(s, eigenvalues, eigenvectors, gen, exponents=exponents, tol=tol)
        out[s] = perturb(theta0, d.to(theta0.device), eps)
    return out


def _final(value: float | torch.Tensor | Sequence[float]) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.reshape(-1)[-1])
    if isinstance(value, Sequence):
        return float(value[-1])
    return float(value)


def mean_positional_divergence(distances_by_strategy: Mapping[str, float | torch.Tensor | Sequence[float]]
                               ) -> float:
    """Figure C.4.1: 1/(2N) sum_i |pos_strat(i) - i| over the N strategies present.

    ``distances_by_strategy`` maps strategy -> final distance (or a distance curve; its last value is used).
    pos is the rank of a strategy's final distance in descending order, i its position in the expected
    order STRATEGIES (restricted to the strategies given). Ties keep the expected order. 0 means the
    expected order; :func:`random_order_expectation` gives the mean over uniformly random orders.
    """
    for s in distances_by_strategy:
        _check_strategy(s)
    present = [s for s in STRATEGIES if s in distances_by_strategy]
    if not present:
        raise ValueError("distances_by_strategy is empty")
    finals = [_final(distances_by_strategy[s]) for s in present]
    if any(math.isnan(f) for f in finals):
        raise ValueError("a final distance is NaN")
    ranking = sorted(range(len(present)), key=lambda i: -finals[i])  # stable: ties keep the expected order
    position = {idx: rank for rank, idx in enumerate(ranking)}
    n = len(present)
    return sum(abs(position[i] - i) for i in range(n)) / (2 * n)


def random_order_expectation(n: int = 5) -> float:
    """E[1/(2n) sum_i |pi(i) - i|] for a uniformly random permutation pi of n items: (n^2 - 1)/(6n).

    Since pi(i) is uniform on {1..n}: sum_i E|pi(i) - i| = (1/n) sum_{i,j} |i - j| = (n^2 - 1)/3.
    0.8 for the paper's n = 5 (Figure C.4.1's red line).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return (n * n - 1) / (6 * n)
