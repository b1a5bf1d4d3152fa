"""Tests for chaosnb.perturb: the five perturbation strategies and Figure C.4.1's positional divergence."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from chaosnb.perturb import (
    STRATEGIES,
    chaotic_mask,
    mean_positional_divergence,
    perturb,
    perturbation_direction,
    perturbed_initialisations,
    random_order_expectation,
    strategy_seed,
)

DT = torch.float64
T = 7  # horizon used to turn L_T eigenvalues into exponents


@pytest.fixture(scope="module")
def lyap() -> dict:
    """Eigenpairs of a synthetic L_T = V diag(mu) V^T with 4 chaotic (mu > 1) and 6 non-chaotic directions."""
    gen = torch.Generator().manual_seed(0)
    mu = torch.tensor([0.05, 0.2, 0.5, 0.8, 0.95, 1.0, 1.3, 2.0, 4.0, 9.0], dtype=DT)
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=gen, dtype=DT))
    # eigenpairs by construction (not by eigh of q diag(mu) q^T): mu = 1.0 stays exactly 1 (edge, non-chaotic)
    # on every CPU and thread count, where eigh returns 1 +- eps on one machine and the other
    lam, vecs = mu, q
    chaotic = lam > 1
    assert int(chaotic.sum()) == 4
    theta0 = torch.randn(10, generator=gen, dtype=DT)
    return dict(lam=lam, vecs=vecs, chaotic=chaotic, theta0=theta0)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("eps", [0.1, 10.0])
def test_perturbation_has_norm_eps(lyap: dict, strategy: str, eps: float) -> None:
    d = perturbation_direction(strategy, lyap["lam"], lyap["vecs"], _gen())
    assert d.shape == (10,) and d.dtype == DT
    assert abs(float(d.norm()) - 1.0) < 1e-14
    theta = perturb(lyap["theta0"], 3.7 * d, eps)
    assert abs(float((theta - lyap["theta0"]).norm()) - eps) <= 1e-12 * max(eps, 1.0)


def test_directions_lie_in_their_subspaces(lyap: dict) -> None:
    v_c, v_n = lyap["vecs"][:, lyap["chaotic"]], lyap["vecs"][:, ~lyap["chaotic"]]
    for seed in range(5):
        d = perturbation_direction("chaotic", lyap["lam"], lyap["vecs"], _gen(seed))
        assert float((v_n.T @ d).norm()) < 1e-12 and abs(float((v_c.T @ d).norm()) - 1) < 1e-12
        d = perturbation_direction("non_chaotic", lyap["lam"], lyap["vecs"], _gen(seed))
        assert float((v_c.T @ d).norm()) < 1e-12 and abs(float((v_n.T @ d).norm()) - 1) < 1e-12
        d = perturbation_direction("random", lyap["lam"], lyap["vecs"], _gen(seed))
        assert float((v_c.T @ d).norm()) > 0.05 and float((v_n.T @ d).norm()) > 0.05


def test_max_strategies_are_the_extreme_eigenvectors(lyap: dict) -> None:
    perm = torch.randperm(10, generator=_gen(3))  # eigenpairs need not be sorted
    lam, vecs = lyap["lam"][perm], lyap["vecs"][:, perm]
    top, bottom = lyap["vecs"][:, -1], lyap["vecs"][:, 0]
    d = perturbation_direction("max_chaotic", lam, vecs)
    assert abs(abs(float(d @ top)) - 1.0) < 1e-12
    d = perturbation_direction("max_non_chaotic", lam, vecs)
    assert abs(abs(float(d @ bottom)) - 1.0) < 1e-12


def test_exponent_api_matches_eigenvalue_api(lyap: dict) -> None:
    exponents = torch.log(lyap["lam"]) / (2 * T)
    assert torch.equal(chaotic_mask(exponents=exponents), chaotic_mask(lyap["lam"]))
    for s in STRATEGIES:
        a = perturbation_direction(s, lyap["lam"], lyap["vecs"], _gen(4))
        b = perturbation_direction(s, eigenvectors=lyap["vecs"], generator=_gen(4), exponents=exponents)
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    with pytest.raises(ValueError, match="exactly one"):
        perturbation_direction("chaotic", lyap["lam"], lyap["vecs"], exponents=exponents)
    with pytest.raises(ValueError, match="exactly one"):
        perturbation_direction("chaotic", eigenvectors=lyap["vecs"])


def test_tol_moves_rounding_ones_out_of_the_chaotic_subspace() -> None:
    lam = torch.tensor([0.5, 1.0 + 1e-9, 3.0], dtype=DT)
    assert chaotic_mask(lam).tolist() == [False, True, True]
    assert chaotic_mask(lam, tol=1e-6).tolist() == [False, False, True]
    d = perturbation_direction("chaotic", lam, torch.eye(3, dtype=DT), _gen(), tol=1e-6)
    assert abs(abs(float(d[2])) - 1.0) < 1e-14


def test_initialisations_are_reproducible(lyap: dict) -> None:
    args = (lyap["theta0"], lyap["lam"], lyap["vecs"], 0.1)
    a = perturbed_initialisations(*args, seed=42)
    b = perturbed_initialisations(*args, seed=42)
    c = perturbed_initialisations(*args, seed=43)
    assert tuple(a) == STRATEGIES
    for s in STRATEGIES:
        assert torch.equal(a[s], b[s])
        assert abs(float((a[s] - lyap["theta0"]).norm()) - 0.1) < 1e-13
    for s in ("chaotic", "random", "non_chaotic"):
        assert not torch.allclose(a[s], c[s])
    for s in ("max_chaotic", "max_non_chaotic"):
        assert torch.equal(a[s], c[s])
    # distinct generator per strategy (no shared Gaussian draws between strategies)
    assert len({strategy_seed(seed, s) for seed in (42, 43) for s in STRATEGIES}) == 10
    # a strategy's draw does not depend on which other strategies are requested
    only = perturbed_initialisations(*args, strategies=("random", "chaotic"), seed=42)
    assert torch.equal(only["random"], a["random"]) and torch.equal(only["chaotic"], a["chaotic"])


def test_errors(lyap: dict) -> None:
    with pytest.raises(ValueError) as err:
        perturbation_direction("chaos", lyap["lam"], lyap["vecs"], _gen())
    assert all(s in str(err.value) for s in STRATEGIES)
    with pytest.raises(ValueError) as err:
        perturbed_initialisations(lyap["theta0"], lyap["lam"], lyap["vecs"], 0.1, strategies=("rand",))
    assert all(s in str(err.value) for s in STRATEGIES)
    eye = torch.eye(3, dtype=DT)
    with pytest.raises(ValueError, match="chaotic subspace"):
        perturbation_direction("chaotic", torch.tensor([0.1, 0.5, 1.0], dtype=DT), eye, _gen())
    with pytest.raises(ValueError, match="non-chaotic subspace"):
        perturbation_direction("non_chaotic", torch.tensor([1.1, 2.0, 3.0], dtype=DT), eye, _gen())
    with pytest.raises(ValueError, match="non-chaotic subspace"):
        perturbation_direction("non_chaotic", None, eye, _gen(), exponents=torch.ones(3, dtype=DT))
    with pytest.raises(ValueError, match="zero norm"):
        perturb(lyap["theta0"], torch.zeros(10, dtype=DT), 0.1)


def test_positional_divergence_expected_and_reversed_order() -> None:
    expected = {s: 5.0 - i for i, s in enumerate(STRATEGIES)}
    assert mean_positional_divergence(expected) == 0.0
    reversed_ = {s: float(i) for i, s in enumerate(STRATEGIES)}
    assert mean_positional_divergence(reversed_) == pytest.approx((4 + 2 + 0 + 2 + 4) / 10)
    # curves: the final distance decides; swapping two neighbours costs 2/(2N)
    curves = {s: torch.tensor([0.0, 1.0, 5.0 - i]) for i, s in enumerate(STRATEGIES)}
    curves["chaotic"], curves["random"] = curves["random"], curves["chaotic"]
    assert mean_positional_divergence(curves) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        mean_positional_divergence({"chaos": 1.0})


@pytest.mark.parametrize("strategies", [STRATEGIES, STRATEGIES[:4], STRATEGIES[1:4]])
def test_random_order_expectation_matches_enumeration(strategies: tuple[str, ...]) -> None:
    n = len(strategies)
    values = [mean_positional_divergence(dict(zip(strategies, map(float, perm), strict=True)))
              for perm in itertools.permutations(range(n))]
    assert len(values) == math.factorial(n)
    assert sum(values) / len(values) == pytest.approx(random_order_expectation(n), abs=1e-12)
    if n == 5:
        assert random_order_expectation() == pytest.approx(0.8)
