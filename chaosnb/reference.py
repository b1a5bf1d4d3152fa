"""Plain references for the appendix's theorems: dense, unrolled or literal computations on small models.

They are what the fast paths are checked against (tests) and what book/a_proofs.md evaluates: SGD unrolled and
differentiated end to end (Theorems A.1, A.3), the tangent map fed exact dense Hessians, Theorem A.2's closed-form
momentum trajectory, Theorem A.3's explicit sum, CGD's step Jacobian (Theorem A.7), Theorem A.5's restricted
log-Lyapunov matrix, the series of Theorem A.4's eq. (33) and the scalar momentum exponents of Theorem A.6.
Small models only: most build N x N matrices at every step.
"""

from __future__ import annotations

import numpy as np


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
