"""The toy surface of Figure B.3.1 and SGD on it."""

import math

import numpy as np
import pytest
import torch
from torch.func import grad, hessian

from chaosnb.toy import (
    curvature_region,
    curvature_stage,
    sgd_path,
    toy_gradient,
    toy_hessian_eigenvalues,
    toy_loss,
    toy_phase_steps,
)

POINTS = [(0.0, 0.0), (0.3, -1.2), (math.pi / 2, 0.7), (2.5, 2.0), (math.pi - 0.05, 0.05), (-4.0, 3.3)]


def _z(p: torch.Tensor) -> torch.Tensor:
    return toy_loss(p[0], p[1])


@pytest.mark.parametrize("x,y", POINTS)
def test_gradient_and_hessian_match_torch_func_and_finite_differences(x, y):
    p = torch.tensor([x, y], dtype=torch.float64)
    np.testing.assert_allclose(toy_gradient(x, y), grad(_z)(p).numpy(), atol=1e-12)
    H = hessian(_z)(p).numpy()
    np.testing.assert_allclose(H, np.diag(toy_hessian_eigenvalues(x, y)), atol=1e-12)
    h = 1e-5
    fd = [(toy_loss(x + h, y) - toy_loss(x - h, y)) / (2 * h),
          (toy_loss(x, y + h) - toy_loss(x, y - h)) / (2 * h)]
    np.testing.assert_allclose(toy_gradient(x, y), fd, atol=1e-8)
    assert toy_loss(x, y) == pytest.approx(-math.cos(x) - 0.05 * y**2)


def test_vectorised_shapes():
    x, y = np.linspace(-3, 3, 7), np.linspace(-1, 1, 7)
    assert toy_gradient(x, y).shape == (7, 2)
    assert toy_hessian_eigenvalues(x[:, None], y[None, :]).shape == (7, 7, 2)
    assert curvature_region(x, y).shape == (7,)


def test_regions_and_stages_at_known_points():
    assert curvature_region(0.0, 0.0) == "positive-negative"
    assert curvature_region(math.pi / 2, 0.0) == "zero-negative"
    assert curvature_region(math.pi, 0.0) == "negative-negative"
    assert curvature_stage(math.pi, 0.0) == 1
    assert curvature_stage(math.pi / 2, 0.0) == 2
    assert curvature_stage(1.0, 0.0) == 3
    assert curvature_stage(0.0, 0.0) == 4
    assert curvature_stage(2 * math.pi + 0.1, 0.0) == 4  # periodic in x
    np.testing.assert_array_equal(curvature_stage(np.array([math.pi, 0.0]), 0.0), [1, 4])


def test_path_is_reproducible_under_a_seed():
    a = sgd_path(noise_std=0.05, seed=3, steps=100)
    b = sgd_path(noise_std=0.05, seed=3, steps=100)
    np.testing.assert_array_equal(a.positions, b.positions)
    assert not np.array_equal(a.positions, sgd_path(noise_std=0.05, seed=4, steps=100).positions)
    assert a.positions.shape == (101, 2) and a.eigenvalues.shape == (101, 2) and a.losses.shape == (101,)


@pytest.mark.parametrize("noise_std", [0.0, 0.02])
def test_negative_curvature_precedes_positive_then_y_takes_over(noise_std):
    path = sgd_path(start=(math.pi - 0.05, 0.05), lr=0.1, steps=400, noise_std=noise_std, seed=0)
    lam_x, lam_y = path.eigenvalues[:, 0], path.eigenvalues[:, 1]
    assert np.all(lam_y < 0)
    assert lam_x[0] < 0 and lam_x[-1] > 0
    if noise_std == 0:
        assert np.count_nonzero(np.diff(np.sign(lam_x))) == 1  # exactly one sign change, negative -> positive
        assert np.all(np.diff(path.losses) < 0)
    first_positive = int(np.argmax(lam_x > 0))
    assert np.all(lam_x[first_positive:] > 0)
    # early: all curvature negative and the gradient lies in it; middle: gradient in positive curvature
    assert path.negative_fraction[0] == 1.0 and path.negative_fraction[-1] == 0.5
    assert path.negative_gradient_share[0] > 0.99
    assert path.negative_gradient_share[first_positive + 5] < 0.05
    # near the x-minimum the negative-curvature y direction takes over
    assert path.stages[-1] == 4 and path.negative_gradient_share[-1] > 0.99
    assert abs(path.positions[-1, 1]) > 10 * abs(path.positions[0, 1])
    assert list(dict.fromkeys(path.stages.tolist())) in ([1, 2, 3, 4], [1, 3, 4])


def test_toy_phase_steps():
    ph = toy_phase_steps(sgd_path(lr=0.1, steps=300, noise_std=0.1, seed=0))
    assert ph["ordered"]
    assert 0 <= ph["negative_first"] < ph["positive"] < ph["negative_again"]
    # a path started at the minimum in x with y = 0 never sees the first two phases in order
    flat_start = toy_phase_steps(sgd_path(start=(0.5, 0.0), lr=0.1, steps=50))
    assert not flat_start["ordered"]
