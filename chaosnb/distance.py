"""Distance statements of the appendix: Theorems A.8 (initialisations), A.9 (random walks), A.10 (fit).

Theorem A.8 (distance of two default initialisations). PyTorch draws every Linear/Conv weight and bias
from U(-b, b) with b = 1/sqrt(k), k = fan_in (in_features, or in_channels/groups * kh * kw). The
difference of two independent U(-b, b) draws is *triangular* on [-2b, 2b] with variance 2 b^2 / 3, so

    E||theta_1 - theta_2||^2 = sum over parameter tensors of numel * 2 / (3 k).

For 784-20-10 this is 20.350 (sqrt: 4.511), for the paper's actual 256-20-10 MLP 20.385 (sqrt: 4.515).
The appendix instead treats the difference as U(-2b, 2b) (variance 4 b^2 / 3), which doubles the squared
distance; its printed value 6.38 (:func:`paper_a8_formula`) is therefore sqrt(2) times too large.
sqrt(E||d||^2) is the root-mean-square distance; by Jensen it is >= E||d||, but at these dimensions the
gap is ~1e-4 relative (:func:`expected_init_distance` with ``second_order=True`` gives the delta-method
value sqrt(m) (1 - v / (8 m^2)), m = E||d||^2, v = Var||d||^2, exact for independent coordinates).

Theorem A.9 (two Gaussian random walks, steps N(0, sigma^2 I) in R^D): x_1(T) - x_2(T) ~ N(0, 2 T sigma^2 I),
so sqrt(E||x_1 - x_2||^2) = sqrt(2 T D) sigma, the appendix's "expected distance"; it is the RMS distance.
The exact mean is sigma sqrt(2T) sqrt(2) Gamma((D+1)/2) / Gamma(D/2) (a scaled chi distribution), smaller
by a factor ~1 - 1/(4D).

Theorem A.10 (linear drift plus random walk): if the accumulated gradient difference has norm alpha t and
the noises are independent N(0, sigma^2 I), E||theta_1 - theta_2||^2 = alpha^2 t^2 + 2 D sigma^2 t. (The
appendix writes this for E||.||, but its proof computes the mean SQUARE.) The authors fit squared distances
by d(t)^2 = eps^2 + a t + b t^2 (:func:`fit_distance_curve`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from scipy.special import gammaln
from torch import nn
from torch.nn.modules.conv import _ConvNd

SizesOrModule = Sequence[int] | nn.Module

# ---------------------------------------------------------------------------------------------------------
# Theorem A.8


def _linear_terms(layer_sizes: Sequence[int], bias: bool = True) -> list[tuple[int, int]]:
    """(numel, fan_in) of every parameter tensor of a stack of Linear layers sizes[0] -> ... -> sizes[-1]."""
    sizes = [int(s) for s in layer_sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"layer_sizes must list >= 2 positive widths, got {tuple(layer_sizes)}")
    terms = []
    for k, m in zip(sizes[:-1], sizes[1:], strict=True):
        terms.append((k * m, k))
        if bias:
            terms.append((m, k))
    return terms


def _module_terms(module: nn.Module) -> list[tuple[int, int]]:
    """(numel, fan_in) of every parameter of a module built from Linear / Conv layers with default init."""
    terms: list[tuple[int, int]] = []
    for sub in module.modules():
        own = list(sub.parameters(recurse=False))
        if not own:
            continue
        if not isinstance(sub, nn.Linear | _ConvNd):
            raise ValueError(f"unsupported parameterised layer {type(sub).__name__}: only Linear/Conv")
        # exactly what reset_parameters uses: fan_in = weight.shape[1] * receptive field size
        w = sub.weight
        fan_in = int(w.shape[1] * math.prod(w.shape[2:]))
        for p in own:
            terms.append((p.numel(), fan_in))
    return terms


def _terms(sizes_or_module: SizesOrModule) -> list[tuple[int, int]]:
    if isinstance(sizes_or_module, nn.Module):
        return _module_terms(sizes_or_module)
    return _linear_terms(sizes_or_module)


def _sq_mean(terms: list[tuple[int, int]]) -> float:
    # each coordinate: U1 - U2 with U ~ U(-b, b), b^2 = 1/k: E (U1 - U2)^2 = 2 b^2 / 3
    return float(sum(numel * 2.0 / (3.0 * k) for numel, k in terms if k > 0))


def _sq_var(terms: list[tuple[int, int]]) -> float:
    # E X^4 = 2 b^4/5 + 6 (b^2/3)^2 = 16 b^4 / 15, so Var X^2 = 16/15 - 4/9 = 28/45 (times b^4 = 1/k^2)
    return float(sum(numel * 28.0 / (45.0 * k * k) for numel, k in terms if k > 0))


def expected_sq_init_distance(layer_sizes: Sequence[int], bias: bool = True) -> float:
    """E||theta_1 - theta_2||^2 for two default-initialised stacks of Linear layers, e.g. (784, 20, 10)."""
    return _sq_mean(_linear_terms(layer_sizes, bias))


def expected_sq_init_distance_module(module: nn.Module) -> float:
    """E||theta_1 - theta_2||^2 for two default initialisations of ``module`` (Linear/Conv layers only;
    fan_in is read from each layer's weight; raises ``ValueError`` for other parameterised layers)."""
    return _sq_mean(_module_terms(module))


def sq_init_distance_variance(sizes_or_module: SizesOrModule) -> float:
    """Var||theta_1 - theta_2||^2 (independent coordinates, 28 b^4 / 45 each)."""
    return _sq_var(_terms(sizes_or_module))


def expected_init_distance(sizes_or_module: SizesOrModule, second_order: bool = False) -> float:
    """sqrt(E||theta_1 - theta_2||^2) (Theorem A.8, corrected), the RMS distance of two default inits.

    By Jensen sqrt(E||d||^2) >= E||d||; the gap is ~Var/(8 m^{3/2}), about 5e-4 for 784-20-10. With
    ``second_order=True`` returns the delta-method mean sqrt(m) (1 - v / (8 m^2)) instead.
    """
    terms = _terms(sizes_or_module)
    m = _sq_mean(terms)
    if not second_order:
        return math.sqrt(m)
    return math.sqrt(m) * (1.0 - _sq_var(terms) / (8.0 * m * m))


def paper_a8_formula(layer_sizes: Sequence[int] = (784, 20, 10)) -> float:
    """The appendix's value sqrt(sum_l 4 m_l / 3 + 4 m_l / (3 k_l)) as substituted in its last line (6.38 for
    784-20-10). It uses Var = 4 b^2 / 3 per coordinate (U(-2b, 2b)) instead of 2 b^2 / 3: sqrt(2) too large.
    (The symbolic line before it omits the 3 in the bias terms; its numeric substitution includes it.)"""
    return math.sqrt(sum(2.0 * numel * 2.0 / (3.0 * k) for numel, k in _linear_terms(layer_sizes)))


class InitDistanceMC(NamedTuple):
    mean: float
    std: float
    sem: float
    rms: float
    distances: np.ndarray


def _linear_stack(sizes: Sequence[int]) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    for k, m in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(int(k), int(m)), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).to(torch.float64)


def monte_carlo_init_distance(model_factory_or_sizes: Callable[[], nn.Module] | Sequence[int],
                              pairs: int = 2000, seed: int = 0) -> InitDistanceMC:
    """Distances ||theta_1 - theta_2||_2 of ``pairs`` pairs of REAL PyTorch default initialisations.

    ``model_factory_or_sizes`` is a zero-argument callable building a fresh module (e.g.
    ``lambda: mlp(784)``), or layer sizes of a Linear stack. All 2 * pairs modules are built one after the
    other from ``torch.manual_seed(seed)`` inside ``torch.random.fork_rng`` (global RNG left untouched).
    """
    if callable(model_factory_or_sizes):
        factory = model_factory_or_sizes
    else:
        sizes = tuple(model_factory_or_sizes)
        _linear_terms(sizes)  # validate

        def factory() -> nn.Module:
            return _linear_stack(sizes)
    d = np.empty(pairs)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for i in range(pairs):
            t1 = _flat(factory())
            t2 = _flat(factory())
            d[i] = float(torch.linalg.vector_norm(t1 - t2))
    std = float(d.std(ddof=1)) if pairs > 1 else float("nan")
    return InitDistanceMC(float(d.mean()), std, std / math.sqrt(pairs), float(np.sqrt(np.mean(d**2))), d)


# ---------------------------------------------------------------------------------------------------------
# Theorem A.9


def random_walk_expected_distance(T, D: int, sigma: float):
    """The appendix's Theorem A.9 value sqrt(2 T D) sigma; it is the RMS distance sqrt(E||x_1 - x_2||^2)."""
    return np.sqrt(2.0 * np.asarray(T, dtype=np.float64) * D) * sigma


def random_walk_mean_distance(T, D: int, sigma: float):
    """Exact E||x_1(T) - x_2(T)|| = sigma sqrt(2T) sqrt(2) Gamma((D+1)/2) / Gamma(D/2) (chi distribution)."""
    return sigma * np.sqrt(2.0 * np.asarray(T, dtype=np.float64)) * math.sqrt(2.0) * math.exp(
        gammaln((D + 1) / 2.0) - gammaln(D / 2.0))


def simulate_random_walks(T: int, D: int, sigma: float, walks: int = 1000, seed: int = 0) -> np.ndarray:
    """Simulate ``walks`` independent pairs of Gaussian walks x_i(t) = x_i(t-1) + eta_i(t), x_i(0) = 0,
    eta_i ~ N(0, sigma^2 I_D); returns ||x_1(t) - x_2(t)|| with shape (walks, T) for t = 1..T."""
    rng = np.random.default_rng(seed)
    x1, x2 = np.zeros((walks, D)), np.zeros((walks, D))
    out = np.empty((walks, T))
    for t in range(T):
        x1 += sigma * rng.standard_normal((walks, D))
        x2 += sigma * rng.standard_normal((walks, D))
        out[:, t] = np.linalg.norm(x1 - x2, axis=1)
    return out


# ---------------------------------------------------------------------------------------------------------
# Theorem A.10


@dataclass(frozen=True)
class DistanceFit:
    """d(t)^2 = eps^2 + a t + b t^2 fitted by least squares on d^2 - eps^2 (eps fixed)."""

    a: float
    b: float
    eps: float
    rss: float  # residual sum of squares of the fit of d^2
    r2: float  # coefficient of determination of d^2 - eps^2 (about 0, no intercept)

    def squared(self, t) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        return self.eps**2 + self.a * t + self.b * t**2

    def __call__(self, t) -> np.ndarray:
        """The fitted distance sqrt(eps^2 + a t + b t^2) (clipped at 0 inside the root)."""
        return np.sqrt(np.clip(self.squared(t), 0.0, None))


def fit_distance_curve(t, d, eps: float) -> DistanceFit:
    """Fit d(t)^2 = eps^2 + a t + b t^2 (Theorem A.10, as the authors fit Figure 3b) by linear least squares
    on y = d^2 - eps^2 with design [t, t^2] and no intercept. For Theorem A.10, a = 2 D sigma^2 (random walk)
    and b = alpha^2 (linear divergence); see :func:`linear_plus_walk_coefficients` for the lr scaling."""
    t = np.asarray(t, dtype=np.float64).ravel()
    d = np.asarray(d, dtype=np.float64).ravel()
    if t.shape != d.shape or t.size < 2:
        raise ValueError("t and d must be 1-D of equal length >= 2")
    y = d**2 - eps**2
    X = np.stack([t, t**2], axis=1)
    (a, b), *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ np.array([a, b])
    rss = float(resid @ resid)
    tss = float(np.sum(y**2))
    return DistanceFit(float(a), float(b), float(eps), rss, 1.0 - rss / tss if tss > 0 else float("nan"))


def linear_plus_walk_coefficients(D: int, sigma: float, alpha: float, lr: float = 1.0) -> tuple[float, float]:
    """(a, b) of E d(t)^2 = eps^2 + a t + b t^2 for :func:`simulate_linear_plus_walk`:
    a = 2 D sigma^2 lr^2 and b = alpha^2 lr^2 (Theorem A.10's beta and alpha^2, scaled by the step size)."""
    return 2.0 * D * sigma**2 * lr**2, alpha**2 * lr**2


def simulate_linear_plus_walk(T: int, D: int, sigma: float, alpha: float, walks: int = 500, seed: int = 0,
                              eps: float = 0.0, lr: float = 1.0) -> np.ndarray:
    """Simulate Theorem A.10: two models with gradients g_i(t) = w_i(t) + eta_i(t), updated by
    theta_i(t) = theta_i(t-1) - lr g_i(t), where w_1(t) - w_2(t) = alpha u for a fixed random unit vector u
    (so ||sum_s (w_1(s) - w_2(s))|| = alpha t) and eta_i ~ N(0, sigma^2 I_D) independent.

    theta_2(0) = 0 and theta_1(0) = eps e with a unit e orthogonal to u (so no cross term), hence exactly
    E||theta_1(t) - theta_2(t)||^2 = eps^2 + (2 D sigma^2 lr^2) t + (alpha^2 lr^2) t^2.
    (With e not orthogonal to u, a would gain 2 eps alpha lr <e, -u>.) Returns distances (walks, T), t = 1..T.
    """
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(D)
    u /= np.linalg.norm(u)
    theta1, theta2 = np.zeros((walks, D)), np.zeros((walks, D))
    if eps:
        if D < 2:
            raise ValueError("eps > 0 needs D >= 2 for an offset orthogonal to the drift")
        e = rng.standard_normal(D)
        e -= (e @ u) * u
        theta1 += eps * e / np.linalg.norm(e)
    out = np.empty((walks, T))
    for t in range(T):
        theta1 -= lr * (alpha * u + sigma * rng.standard_normal((walks, D)))
        theta2 -= lr * (sigma * rng.standard_normal((walks, D)))
        out[:, t] = np.linalg.norm(theta1 - theta2, axis=1)
    return out


def fit_distance_curve_se(t, distances, eps: float):
    """Fit Theorem A.10's d(t)^2 = eps^2 + a t + b t^2 to the mean squared distance of many simulated pairs
    (``distances`` (walks, T), columns t) with :func:`chaosnb.distance.fit_distance_curve` applied to the
    RMS distance, plus standard errors of (a, b): the least-squares fit is linear in the data, so the fit to
    the mean is the mean of the per-walk fits and its standard error is their std / sqrt(walks).
    Returns (DistanceFit, se_a, se_b)."""
    d = np.asarray(distances, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    fit = fit_distance_curve(t, np.sqrt(np.mean(d**2, axis=0)), eps)
    design = np.stack([t, t**2], axis=1)
    coef, *_ = np.linalg.lstsq(design, (d**2 - eps**2).T, rcond=None)  # (2, walks)
    se = coef.std(axis=1, ddof=1) / np.sqrt(d.shape[0])
    return fit, float(se[0]), float(se[1])


def distance_moments(distances) -> dict:
    """Per-column Monte Carlo summaries of simulated distances (samples, T): ``mean`` and its standard error
    ``mean_se``; ``rms`` = sqrt(mean d^2) and its standard error ``rms_se`` (delta method: se(mean d^2) / (2 rms))."""
    d = np.asarray(distances, dtype=np.float64)
    n = d.shape[0]
    sq = d**2
    rms = np.sqrt(sq.mean(axis=0))
    return {"mean": d.mean(axis=0), "mean_se": d.std(axis=0, ddof=1) / np.sqrt(n), "rms": rms,
            "rms_se": sq.std(axis=0, ddof=1) / np.sqrt(n) / (2.0 * rms)}
