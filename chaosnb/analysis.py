"""Small reductions of recorded runs used by the notebooks' verdicts (no plotting, no I/O)."""

from __future__ import annotations

import math

import numpy as np

from chaosnb.train import RunResult


def tail_mean(result: RunResult, metric: str, window: int, column: int | None = None) -> float:
    """Mean of the last ``window`` finite recorded values of a metric (optionally one model's column)."""
    _, values = result.series(metric)
    if column is not None:
        values = values[:, column]
    values = values[np.isfinite(values)][-window:]
    return float(values.mean()) if values.size else math.nan


def window_mean(result: RunResult, metric: str, start: int, stop: int, column: int | None = None) -> float:
    """Mean of a metric over recorded steps in [start, stop)."""
    steps, values = result.series(metric)
    if column is not None:
        values = values[:, column]
    mask = (steps >= start) & (steps < stop) & np.isfinite(values)
    return float(values[mask].mean()) if mask.any() else math.nan


def first_step_reaching(result: RunResult, metric: str, level: float, window: int = 1) -> int | None:
    """First step at which the trailing ``window`` mean of a metric reaches ``level`` (None if never)."""
    from chaosnb.plots import moving_average

    steps, values = result.series(metric)
    smooth = moving_average(values, window)
    hits = np.nonzero(smooth >= level)[0]
    return int(steps[hits[0]]) if hits.size else None


def trend(result: RunResult, metric: str, column: int | None = None) -> float:
    """Least-squares slope of a metric against its step index, per 1000 steps."""
    steps, values = result.series(metric)
    if column is not None:
        values = values[:, column]
    mask = np.isfinite(values)
    if mask.sum() < 2:
        return math.nan
    return float(np.polyfit(steps[mask], values[mask], 1)[0] * 1000)


def lyapunov_distance_bounds(stage1: RunResult, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First-order distance bounds eps*sigma_min(Y_t) <= d(t) <= eps*sigma_max(Y_t) from a tangent-map run.

    With sigma_i(Y_t) = exp(t * ftle_i(t)), returns (steps, lower, upper) at the run's tangent steps t:
    lower = eps * exp(t * ftle_min(t)) (smallest finite exponent; 0 where it is -inf / not finite) and
    upper = eps * exp(t * ftle_max(t)). Steps are the numbers of updates taken (int array).
    """
    steps, fmax = stage1.series("ftle_max")
    steps_min, fmin = stage1.series("ftle_min")
    if not np.array_equal(steps, steps_min):
        raise ValueError("ftle_max and ftle_min were recorded at different steps")
    t = np.asarray(steps, dtype=np.float64)
    fmax = np.asarray(fmax, dtype=np.float64)
    fmin = np.asarray(fmin, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        upper = eps * np.exp(t * fmax)
        lower = np.where(np.isfinite(fmin), eps * np.exp(t * np.where(np.isfinite(fmin), fmin, 0.0)), 0.0)
    upper = np.where(np.isnan(fmax), np.nan, upper)
    lower = np.where(np.isnan(fmin), np.nan, lower)
    return np.asarray(steps, dtype=np.int64), lower, upper


def tangent_endpoints(result: RunResult, metric: str) -> tuple[int, float, int, float]:
    """(first step, value, last step, value) of a tangent-step metric over its FINITE recorded values.

    Non-finite entries (e.g. an ftle_min of -inf when no exponent is resolved) are skipped; all nan when
    the metric has no finite value.
    """
    steps, values = result.series(metric)
    values = np.asarray(values, dtype=np.float64)
    mask = np.isfinite(values)
    if not mask.any():
        return -1, math.nan, -1, math.nan
    idx = np.nonzero(mask)[0]
    return int(steps[idx[0]]), float(values[idx[0]]), int(steps[idx[-1]]), float(values[idx[-1]])


def tangent_value_at(result: RunResult, metric: str, step: int) -> tuple[int, float]:
    """(step, value) of a tangent-step metric at the last recorded step <= ``step`` ((-1, nan) if none)."""
    steps, values = result.series(metric)
    idx = np.nonzero(np.asarray(steps) <= step)[0]
    if not idx.size:
        return -1, math.nan
    return int(steps[idx[-1]]), float(values[idx[-1]])


def a6_bound_at_tangent_steps(result: RunResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Theorem A.6 against the measured maximal exponent: (tangent steps t, bound(t), ftle_max(t)).

    bound(t) = (1/t) sum_{s<t} lle_max_step(s) (:func:`chaosnb.lyapunov.mlce_upper_bound`); lle_max_step is
    recorded at the 0-based index s of the update, so t updates use the entries s = 0..t-1. Tangent steps
    whose t updates are not all recorded (a diverged run) get nan.
    """
    from chaosnb.lyapunov import mlce_upper_bound

    lle_steps, lle = result.series("lle_max_step")
    order = np.argsort(lle_steps)
    lle_steps, lle = np.asarray(lle_steps)[order], np.asarray(lle, dtype=np.float64)[order]
    running = mlce_upper_bound(lle).numpy() if lle.size else np.zeros(0)
    contiguous = np.array_equal(lle_steps, np.arange(lle_steps.size))
    steps, fmax = result.series("ftle_max")
    bound = np.full(len(steps), np.nan)
    for i, t in enumerate(np.asarray(steps, dtype=np.int64)):
        if contiguous and 1 <= t <= running.size:
            bound[i] = running[t - 1]
    return np.asarray(steps, dtype=np.int64), bound, np.asarray(fmax, dtype=np.float64)


def chaotic_overlap_with_baseline(result: RunResult, s0: int | None = None) -> dict:
    """Figure C.2.1 for one tangent-map run: overlap of V_chaotic(s0) with V_chaotic(t), s0 a snapshot step
    (default: the first), and the random baseline of equation (65) for this run (R = 1: max(d0, d_t) / N).

    Returns a dict with s0, d0 = dim V_chaotic(s0), n (number of parameters), steps (t > s0 where the overlap
    was recorded), overlap, dims (d_t) and baseline (arrays of the same length as steps).
    """
    from chaosnb.subspace import random_baseline

    snapshots = result.config.snapshot_steps
    s0 = min(snapshots) if s0 is None else int(s0)
    if s0 not in snapshots:
        raise ValueError(f"step {s0} is not a snapshot step of this run (snapshot_steps = {snapshots})")
    dim_steps, dims = result.series("chaotic_dim")
    _, non_dims = result.series("non_chaotic_dim")
    lookup = {int(s): i for i, s in enumerate(dim_steps)}
    i0 = lookup[s0]
    n = int(dims[i0] + non_dims[i0])
    d0 = int(dims[i0])
    steps, values = result.series(f"overlap_from_{s0}")
    steps = np.asarray(steps, dtype=np.int64)
    dims_t = np.array([dims[lookup[int(s)]] for s in steps], dtype=np.float64)
    if steps.size:
        baseline = np.asarray(random_baseline([d0], dims_t[None, :], [n]), dtype=np.float64).reshape(-1)
    else:
        baseline = np.zeros(0)
    return {"s0": int(s0), "d0": d0, "n": n, "steps": steps, "overlap": np.asarray(values, dtype=np.float64),
            "dims": dims_t, "baseline": baseline}


# ---------------------------------------------------------------------------------------------------------
# Appendix A ("the proofs, checked numerically", book/a_proofs.md) and Figure B.3.1 (book/b3_toy.md)


def random_batches(steps: int, batch: int, in_features: int, classes: int, seed: int = 0,
                   dtype=None) -> list:
    """``steps`` random mini-batches (x ~ N(0, I) of shape (batch, in_features), integer labels < classes)
    from a private generator: synthetic data for the small-model checks of Theorems A.1-A.3 and A.6-A.7."""
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    dtype = dtype or torch.float64
    return [(torch.randn(batch, in_features, generator=gen, dtype=dtype),
             torch.randint(0, classes, (batch,), generator=gen)) for _ in range(int(steps))]


def unrolled_sgd_jacobian(flat, theta0, batches, lr: float, momentum: float = 0.0):
    """(theta_k, d theta_k / d theta_0): k = len(batches) SGD steps written as one differentiable loop
    (torch.optim.SGD's rule, dampening 0: buf <- momentum buf + g, theta <- theta - lr buf, buf_0 = 0) and
    differentiated end to end with ``torch.func.jacrev`` (reverse mode through every step, no Hessian used).
    The reference for the tangent-map recursions of Theorems A.1 (momentum 0) and A.3."""
    import torch
    from torch.func import grad, jacrev

    def run(theta):
        buf = torch.zeros_like(theta)
        for x, y in batches:
            g = grad(flat.loss_fn(x, y))(theta)
            buf = momentum * buf + g
            theta = theta - lr * buf
        return theta, theta

    jac, theta_k = jacrev(run, has_aux=True)(theta0.detach())
    return theta_k.detach(), jac.detach()


def tangent_map_along(flat, theta0, batches, lr: float, momentum: float = 0.0) -> dict:
    """Run SGD (with momentum, torch.optim.SGD's rule) over ``batches`` from ``theta0`` and evolve the tangent
    map with :class:`chaosnb.lyapunov.TangentMap` fed the exact dense Hessian of each step's mini-batch loss
    (:func:`chaosnb.curvature.dense_hessian`). For small models only (N x N matrices at every step).

    Returns a dict: ``thetas`` (T+1, N), ``hessians`` (T, N, N), ``tangents`` (T+1, N, N) with Y_0 = I and
    Y_t = d theta_t / d theta_0, ``ftle_max`` (T,) the maximal finite-time exponent (1/t) log ||Y_t||_2 for
    t = 1..T and ``lle_max`` (T,) the per-step maximal local exponent log ||I - lr H_t||_2 (Theorem A.6).
    """
    import torch
    from torch.func import grad

    from chaosnb.curvature import dense_hessian
    from chaosnb.lyapunov import TangentMap, max_local_exponent

    theta = theta0.detach().to(torch.float64)
    tm = TangentMap(theta.numel(), lr, momentum)
    buf = torch.zeros_like(theta)
    thetas, hessians, tangents = [theta], [], [tm.matrix()]
    ftle, lle = [], []
    for x, y in batches:
        loss = flat.loss_fn(x, y)
        h = dense_hessian(loss, theta)
        g = grad(loss)(theta)
        tm.step(h)
        buf = momentum * buf + g
        theta = theta - lr * buf
        thetas.append(theta)
        hessians.append(h)
        tangents.append(tm.matrix())
        ftle.append(tm.lyapunov(method="full").max_exponent)
        lle.append(max_local_exponent(h, lr))
    return {"thetas": torch.stack(thetas), "hessians": torch.stack(hessians), "tangents": torch.stack(tangents),
            "ftle_max": np.array(ftle), "lle_max": np.array(lle)}


def momentum_unrolled_trajectory(flat, theta0, batches, lr: float, momentum: float):
    """Theorem A.2's closed form theta_{t+1} = theta_t - lr sum_{s=0}^{t} momentum^(t-s) g(theta_s, z_s),
    evaluated literally (every past gradient kept and re-weighted, no velocity buffer). Returns (T+1, N)."""
    import torch
    from torch.func import grad

    theta = theta0.detach().to(torch.float64)
    thetas, grads = [theta], []
    for t, (x, y) in enumerate(batches):
        grads.append(grad(flat.loss_fn(x, y))(theta))
        weights = momentum ** torch.arange(t, -1, -1, dtype=torch.float64)
        theta = theta - lr * (weights[:, None] * torch.stack(grads)).sum(0)
        thetas.append(theta)
    return torch.stack(thetas)


def torch_sgd_trajectory(flat, theta0, batches, lr: float, momentum: float):
    """The same steps taken by ``torch.optim.SGD(lr, momentum)`` on one flat parameter. Returns (T+1, N)."""
    import torch

    param = torch.nn.Parameter(theta0.detach().to(torch.float64).clone())
    opt = torch.optim.SGD([param], lr=lr, momentum=momentum)
    thetas = [param.detach().clone()]
    for x, y in batches:
        opt.zero_grad()
        flat.loss(param, x, y).backward()
        opt.step()
        thetas.append(param.detach().clone())
    return torch.stack(thetas)


def momentum_tangent_explicit_sum(hessians, tangents, lr: float, momentum: float, first: int = 0):
    """Theorem A.3's explicit form Y_{t+1} = Y_t - lr sum_{s=first}^{t} momentum^(t-s) H_s Y_s, from the Hessians
    H_0..H_{T-1} and tangents Y_0..Y_T of :func:`tangent_map_along` (each Y_t on the right-hand side is the
    recorded one). ``first=0`` is eq. (32); ``first=1`` is eq. (29) as printed. Returns the predicted Y_1..Y_T."""
    import torch

    out = []
    for t in range(hessians.shape[0]):
        acc = torch.zeros_like(tangents[0])
        for s in range(first, t + 1):
            acc = acc + momentum ** (t - s) * hessians[s] @ tangents[s]
        out.append(tangents[t] - lr * acc)
    return torch.stack(out)


def pruned_step_jacobian(flat, theta, x, y, plan):
    """Jacobian of one CGD step theta -> theta - lr P_keep grad L_B(theta) (Theorem A.7) by ``jacrev``, with the
    prune plan (projector) held fixed as in eq. (47)-(50); lr is the plan's."""
    from torch.func import grad, jacrev

    from chaosnb.cgd import pruned_gradient

    loss = flat.loss_fn(x, y)

    def step(t):
        return t - plan.lr * pruned_gradient(grad(loss)(t), plan)

    return jacrev(step)(theta.detach()).detach()


def restricted_log_lyapunov_matrix(hvp, basis, lr: float):
    """Theorem A.5 on the computed range of a low-rank Hessian: with Q (N, r) orthonormal, form
    B = Q^T (I - lr H)^T (I - lr H) Q from Hessian-vector products (``hvp``: (N, k) -> H (N, k)), and return
    the eigenvalues (ascending) of (1/2) logm(B) (``scipy.linalg.logm``) and the residual
    max|(I - lr H)^2 q - q| over a few random unit q orthogonal to Q (the complement, where the operator must
    be the identity)."""
    import scipy.linalg
    import torch

    q = basis.to(torch.float64)
    jq = q - lr * hvp(q)
    b = (jq - lr * hvp(jq))
    b = q.T @ b
    b = 0.5 * (b + b.T).cpu().numpy()
    log_b = scipy.linalg.logm(b)
    log_b = np.real(0.5 * (log_b + log_b.T))
    eig = np.linalg.eigvalsh(0.5 * log_b)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(q.shape[0], 4, generator=gen, dtype=torch.float64)
    z = z - q @ (q.T @ z)
    z = z - q @ (q.T @ z)
    z = z / z.norm(dim=0)
    jz = z - lr * hvp(z)
    jz = jz - lr * hvp(jz)
    return eig, float((jz - z).abs().max())


def fit_distance_curve_se(t, distances, eps: float):
    """Fit Theorem A.10's d(t)^2 = eps^2 + a t + b t^2 to the mean squared distance of many simulated pairs
    (``distances`` (walks, T), columns t) with :func:`chaosnb.distance.fit_distance_curve` applied to the
    RMS distance, plus standard errors of (a, b): the least-squares fit is linear in the data, so the fit to
    the mean is the mean of the per-walk fits and its standard error is their std / sqrt(walks).
    Returns (DistanceFit, se_a, se_b)."""
    from chaosnb.distance import fit_distance_curve

    d = np.asarray(distances, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    fit = fit_distance_curve(t, np.sqrt(np.mean(d**2, axis=0)), eps)
    design = np.stack([t, t**2], axis=1)
    coef, *_ = np.linalg.lstsq(design, (d**2 - eps**2).T, rcond=None)  # (2, walks)
    se = coef.std(axis=1, ddof=1) / np.sqrt(d.shape[0])
    return fit, float(se[0]), float(se[1])


def toy_phase_steps(path, high: float = 0.9, low: float = 0.1) -> dict:
    """Figure B.3.1's order of events along a :class:`chaosnb.toy.ToyPath`, from its arrays:

    * ``negative_first``: first step where the x-curvature is negative and >= ``high`` of ||g||^2 lies in
      negative-curvature directions (stage 1);
    * ``positive``: first later step where the x-curvature is positive and <= ``low`` of ||g||^2 lies in
      negative-curvature directions (the gradient lives in positive curvature, stage 3);
    * ``negative_again``: first step after that in stage 4 (near the x-minimum) with >= ``high`` of ||g||^2
      in negative curvature again (the y-direction has taken over).

    Values are step indices or None; ``ordered`` is True when all three exist (in this order by construction).
    """
    share = np.asarray(path.negative_gradient_share, dtype=np.float64)
    ev_x = np.asarray(path.eigenvalues)[:, 0]
    stages = np.asarray(path.stages)

    def first(mask, after):
        idx = np.nonzero(mask & (np.arange(mask.size) > after))[0]
        return int(idx[0]) if idx.size else None

    s1 = first((ev_x < 0) & (share >= high), -1)
    s3 = first((ev_x > 0) & (share <= low), s1) if s1 is not None else None
    s4 = first((stages == 4) & (share >= high), s3) if s3 is not None else None
    return {"negative_first": s1, "positive": s3, "negative_again": s4,
            "ordered": s1 is not None and s3 is not None and s4 is not None}


def matrix_log_series(a, terms: int = 200, as_printed: bool = False) -> np.ndarray:
    """Truncated series of Theorem A.4's eq. (33) for a symmetric matrix ``a``: sum_{k=1}^{terms} c_k (A - I)^k with
    c_k = (-1)^(k+1) / k (the Mercator series of ln A; converges iff the spectrum lies in (0, 2]) or, with
    ``as_printed=True``, c_k = (-1)^k / k as eq. (33) is printed (which sums to -ln A)."""
    a = np.asarray(a, dtype=np.float64)
    m = a - np.eye(a.shape[0])
    power = np.eye(a.shape[0])
    out = np.zeros_like(a)
    for k in range(1, int(terms) + 1):
        power = power @ m
        out += ((-1.0) ** k if as_printed else (-1.0) ** (k + 1)) / k * power
    return out


def scalar_momentum_exponents(lam: float, lr: float, momentum: float, steps: int) -> dict:
    """Theorem A.6 with momentum on the 1-D quadratic L = lam theta^2 / 2 (Hessian ``lam`` at every step).

    Evolves :class:`chaosnb.lyapunov.TangentMap` (N = 1) and returns ``ftle`` (steps,), the finite-time
    exponent (1/t) log|Y_t|; ``bound``, Theorem A.6's running mean of the per-step maximal LLE log|1 - lr lam|
    (constant here); ``rate``, the exact asymptotic exponent log rho of the heavy-ball recursion
    theta_{t+1} = (1 + momentum - lr lam) theta_t - momentum theta_{t-1} (spectral radius of its companion
    matrix)."""
    import torch

    from chaosnb.lyapunov import TangentMap, max_local_exponent, mlce_upper_bound

    tm = TangentMap(1, lr, momentum)
    h = torch.tensor([[float(lam)]], dtype=torch.float64)
    ftle, lle = [], []
    for _ in range(int(steps)):
        tm.step(h)
        ftle.append(tm.lyapunov(method="full").max_exponent)
        lle.append(max_local_exponent(h, lr))
    companion = np.array([[1.0 + momentum - lr * lam, -momentum], [1.0, 0.0]])
    rate = float(np.log(np.abs(np.linalg.eigvals(companion)).max()))
    return {"ftle": np.array(ftle), "bound": mlce_upper_bound(lle).numpy(), "rate": rate}


def distance_moments(distances) -> dict:
    """Per-column Monte Carlo summaries of simulated distances (samples, T): ``mean`` and its standard error
    ``mean_se``; ``rms`` = sqrt(mean d^2) and its standard error ``rms_se`` (delta method: se(mean d^2) / (2 rms))."""
    d = np.asarray(distances, dtype=np.float64)
    n = d.shape[0]
    sq = d**2
    rms = np.sqrt(sq.mean(axis=0))
    return {"mean": d.mean(axis=0), "mean_se": d.std(axis=0, ddof=1) / np.sqrt(n), "rms": rms,
            "rms_se": sq.std(axis=0, ddof=1) / np.sqrt(n) / (2.0 * rms)}


# ---------------------------------------------------------------------------------------------------------
# Perturbation (distance) experiments: C.3.1-C.3.3, C.4.1, C.5.1


def _perturbed_names(result: RunResult, columns: int) -> list[str]:
    """Names of the perturbed models (the distance columns), from the run's meta or STRATEGIES order."""
    from chaosnb.perturb import STRATEGIES

    names = list(result.meta.get("models", []))[1:] or list(STRATEGIES)
    if len(names) != columns:
        raise ValueError(f"{columns} distance columns but models {names}")
    return names


def perturbation_distances_at(result: RunResult, step: int | None = None) -> dict[str, float]:
    """{strategy: |theta_s(t) - theta_0(t)|} of a perturbation run at recorded step ``step``.

    Default: the last recorded step. Strategies whose distance is not finite there (NaN direction, e.g. an
    empty chaotic subspace) are left out. Raises ValueError if ``step`` was not recorded.
    """
    steps, d = result.series("distance")
    d = np.atleast_2d(np.asarray(d, dtype=np.float64))
    if step is None:
        row = d.shape[0] - 1
    else:
        hits = np.nonzero(np.asarray(steps) == step)[0]
        if not hits.size:
            raise ValueError(f"distance was not recorded at step {step}")
        row = int(hits[0])
    names = _perturbed_names(result, d.shape[1])
    return {name: float(d[row, j]) for j, name in enumerate(names) if math.isfinite(d[row, j])}


def distance_growth(result: RunResult, step: int | None = None) -> float:
    """Geometric mean over the strategies of d(step) / eps: how much the perturbations grew (1 = not at all)."""
    finals = np.array(list(perturbation_distances_at(result, step).values()))
    finals = finals[finals > 0]
    if not finals.size:
        return math.nan
    return float(np.exp(np.mean(np.log(finals / result.config.perturb_eps))))


def smoothed_columns(result: RunResult, metric: str, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a per-model metric (n, k) with each column replaced by its trailing moving average."""
    from chaosnb.plots import moving_average

    steps, values = result.series(metric)
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        return steps, moving_average(values, window)
    return steps, np.stack([moving_average(values[:, j], window) for j in range(values.shape[1])], axis=1)


def accuracy_gaps(result: RunResult, window: int, metric: str = "train_acc",
                  early_fraction: float = 0.25) -> dict[str, dict[str, float]]:
    """Accuracy of each perturbed model minus the unperturbed model's (column 0) in a perturbation run.

    Per model: ``final`` = difference of the last values of the trailing ``window`` moving averages (C.3.2/C.3.3),
    ``mean`` = mean difference over the whole run, ``early`` = mean difference over the first ``early_fraction``
    of the recorded steps (at least one). All models see the same mini-batches, so the differences are paired.
    """
    steps, values = result.series(metric)
    values = np.asarray(values, dtype=np.float64)
    names = _perturbed_names(result, values.shape[1] - 1)
    _, smooth = smoothed_columns(result, metric, window)
    n_early = max(1, int(round(early_fraction * len(steps))))
    out = {}
    for j, name in enumerate(names, start=1):
        diff = values[:, j] - values[:, 0]
        ok = np.isfinite(diff)
        early = ok.copy()
        early[n_early:] = False
        out[name] = {"final": float(smooth[-1, j] - smooth[-1, 0]),
                     "mean": float(diff[ok].mean()) if ok.any() else math.nan,
                     "early": float(diff[early].mean()) if early.any() else math.nan}
    return out


def bounds_coverage(result: RunResult, bound_steps, lower, upper) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Which recorded distances lie within [lower, upper] at the bound steps (Figure C.5.1).

    Returns (steps, names, inside): the bound steps at which the perturbation run recorded a distance, the
    strategies with finite distances, and a bool array (len(steps), len(names)). A NaN bound counts as violated.
    """
    steps, d = result.series("distance")
    d = np.atleast_2d(np.asarray(d, dtype=np.float64))
    names_all = _perturbed_names(result, d.shape[1])
    keep_cols = [j for j in range(d.shape[1]) if np.isfinite(d[:, j]).all()]
    index = {int(s): i for i, s in enumerate(np.asarray(steps))}
    rows, lo_list, up_list = [], [], []
    for t, lo, up in zip(np.asarray(bound_steps), np.asarray(lower, dtype=np.float64),
                         np.asarray(upper, dtype=np.float64), strict=True):
        if int(t) in index:
            rows.append(int(t))
            lo_list.append(lo)
            up_list.append(up)
    sel = d[[index[t] for t in rows]][:, keep_cols] if rows else np.empty((0, len(keep_cols)))
    lo_arr = np.asarray(lo_list, dtype=np.float64)[:, None]
    up_arr = np.asarray(up_list, dtype=np.float64)[:, None]
    with np.errstate(invalid="ignore"):
        inside = (sel >= lo_arr) & (sel <= up_arr) if rows else np.zeros((0, len(keep_cols)), dtype=bool)
    return np.asarray(rows, dtype=np.int64), [names_all[j] for j in keep_cols], inside
