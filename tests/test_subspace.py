"""The subspace-overlap metric (Theorem A.11) and its random baseline (eq. 65)."""

import numpy as np
import pytest
import scipy.linalg
import torch

from chaosnb.subspace import (
    orthonormal_basis,
    overlap,
    overlap_principal_angles,
    overlap_projectors,
    random_baseline,
    random_orthonormal_basis,
    random_overlap_expectation,
    random_overlap_monte_carlo,
)


def _random_pair(rng, n, a, b):
    return random_orthonormal_basis(n, a, rng), random_orthonormal_basis(n, b, rng)


def test_orthogonal_subspaces_have_zero_overlap():
    eye = np.eye(8)
    assert overlap(eye[:, :3], eye[:, 3:7]) == 0.0
    assert overlap_projectors(eye[:, :3], eye[:, 3:7]) == 0.0


@pytest.mark.parametrize("a,b", [(2, 5), (5, 2), (4, 4)])
def test_nested_subspaces_have_overlap_one(a, b):
    rng = np.random.default_rng(0)
    big = random_orthonormal_basis(12, max(a, b), rng)
    small = big @ random_orthonormal_basis(max(a, b), min(a, b), rng)  # a random subspace inside big
    V, W = (small, big) if a <= b else (big, small)
    assert overlap(V, W) == pytest.approx(1.0, abs=1e-12)
    assert overlap(W, V) == pytest.approx(1.0, abs=1e-12)
    assert overlap_projectors(V, W) == pytest.approx(1.0, abs=1e-12)


def test_random_cases_in_unit_interval_and_match_projector_and_principal_angle_forms():
    rng = np.random.default_rng(1)
    for _ in range(30):
        n = int(rng.integers(2, 25))
        a, b = int(rng.integers(1, n + 1)), int(rng.integers(1, n + 1))
        V, W = _random_pair(rng, n, a, b)
        o = overlap(V, W)
        assert 0.0 <= o <= 1.0 + 1e-12
        assert o == pytest.approx(overlap(W, V), abs=1e-12)
        assert o == pytest.approx(overlap_projectors(V, W), abs=1e-10)
        cos2 = np.cos(scipy.linalg.subspace_angles(V, W)) ** 2
        assert len(cos2) == min(a, b)
        assert o == pytest.approx(cos2.mean(), abs=1e-10)
        assert o == pytest.approx(overlap_principal_angles(V, W), abs=1e-10)


def test_orthonormalize_option_and_input_checks():
    rng = np.random.default_rng(2)
    V, W = _random_pair(rng, 10, 3, 4)
    mixed_V = V @ rng.standard_normal((3, 3))
    spanning_W = np.concatenate([W, W[:, :2] + W[:, 2:]], axis=1)  # rank-deficient spanning set of W
    assert overlap(mixed_V, spanning_W, orthonormalize=True) == pytest.approx(overlap(V, W), abs=1e-10)
    assert orthonormal_basis(spanning_W).shape == (10, 4)
    with pytest.raises(ValueError, match="orthonormal"):
        overlap(mixed_V, W, check=True)
    with pytest.raises(ValueError, match="different spaces"):
        overlap(V, np.eye(9)[:, :2])
    # torch tensors are accepted
    assert overlap(torch.from_numpy(V), torch.from_numpy(W)) == pytest.approx(overlap(V, W))


def test_empty_subspace_gives_nan():
    V = np.eye(5)[:, :2]
    assert np.isnan(overlap(V, np.zeros((5, 0))))
    assert np.isnan(overlap_projectors(np.zeros((5, 0)), V))
    assert np.isnan(random_overlap_expectation(0, 3, 5))


@pytest.mark.parametrize("a,b,n", [(3, 7, 20), (10, 2, 30), (5, 5, 12)])
def test_closed_form_random_overlap_matches_monte_carlo(a, b, n):
    expected = random_overlap_expectation(a, b, n)
    assert expected == pytest.approx(max(a, b) / n)
    mc = random_overlap_monte_carlo(a, b, n, samples=1500, seed=a + b)
    assert abs(mc.mean - expected) < 4 * mc.sem
    # E ||V^T W||_F^2 = a b / n
    assert np.mean(mc.samples * min(a, b)) == pytest.approx(a * b / n, rel=5 * mc.sem / mc.mean)


def test_random_baseline_eq65_over_runs_and_time():
    dims0 = np.array([10, 4])
    dims_t = np.array([[10, 5, 2], [2, 8, 4]])
    n = np.array([100, 50])
    out = random_baseline(dims0, dims_t, n)
    expected = [(10 / 100 + 4 / 50) / 2, (10 / 100 + 8 / 50) / 2, (10 / 100 + 4 / 50) / 2]
    np.testing.assert_allclose(out, expected)
    assert random_baseline([3, 6], [6, 3], 12) == pytest.approx(0.5)
    # a run with an empty subspace is left out of that time step's mean
    np.testing.assert_allclose(random_baseline([4, 4], [[0, 2], [8, 2]], 16), [0.5, 0.25])
    with pytest.raises(ValueError):
        random_baseline([1, 2, 3], [1, 2], 10)
