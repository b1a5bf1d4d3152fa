"""The training loop behind every run: SGD or CGD on the flat parameter vector, with recording.

Per step t (0-based) on the mini-batch of the seeded sampler: loss and gradient; the exact Hessian spectrum
when pruning, the tangent map or spectrum logging needs it; the optimiser step (``torch.optim.SGD`` or
:class:`chaosnb.cgd.CGD`); the tangent map update with the step's Jacobian (I - lr H, or I - lr P H for CGD).
A :class:`Training` object holds the whole state, so it can be checkpointed and resumed bit-identically.
The results store (:mod:`chaosnb.runs`) is the only place that writes files.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.func import grad_and_value

from chaosnb.cgd import CGD
from chaosnb.config import RunConfig
from chaosnb.curvature import HessianDiverged, Spectrum, minibatch_spectrum
from chaosnb.data import Dataset, load_dataset, sampler_for
from chaosnb.lyapunov import Float32TangentMap, TangentMap, factored_hessian, max_local_exponent
from chaosnb.models import make_flat_model
from chaosnb.perturb import STRATEGIES, perturbation_direction, strategy_seed
from chaosnb.subspace import overlap


class Recorder:
    """Columns of recorded metrics: name -> (steps, values); values may be scalars or fixed-size vectors."""

    def __init__(self) -> None:
        self.columns: dict[str, tuple[list[int], list]] = {}

    def add(self, name: str, step: int, value) -> None:
        steps, values = self.columns.setdefault(name, ([], []))
        steps.append(int(step))
        values.append(np.asarray(value, dtype=np.float64) if not np.isscalar(value) else float(value))

    def arrays(self) -> dict[str, np.ndarray]:
        """``{name: values, name + '__step': steps}`` as numpy arrays."""
        out = {}
        for name, (steps, values) in self.columns.items():
            out[name] = np.asarray(values, dtype=np.float64)
            out[f"{name}__step"] = np.asarray(steps, dtype=np.int64)
        return out

    def state_dict(self) -> dict:
        return {name: (list(s), [np.array(v, copy=True) if isinstance(v, np.ndarray) else v for v in vals])
                for name, (s, vals) in self.columns.items()}

    def load_state_dict(self, state: dict) -> None:
        self.columns = {name: (list(s), list(v)) for name, (s, v) in state.items()}


def gradient_overlaps(g: torch.Tensor, spec: Spectrum) -> dict[str, float]:
    """|cos| between the gradient and Hessian eigenvectors (Figures B.2.3, B.2.4): with the top and the
    most negative eigenvector, and averaged over the positive and over the negative eigenvectors."""
    g = g.to(spec.eigenvectors.dtype)
    norm = float(g.norm())
    if norm == 0.0 or spec.eigenvalues.numel() == 0:
        return {"cos_top": math.nan, "cos_min": math.nan, "cos_pos_mean": math.nan, "cos_neg_mean": math.nan}
    cos = (spec.eigenvectors.T @ g).abs() / norm  # eigenvectors are unit vectors
    lam = spec.eigenvalues
    pos, neg = lam > spec.tol, lam < -spec.tol
    return {"cos_top": float(cos[-1]), "cos_min": float(cos[0]) if bool(neg.any()) else math.nan,
            "cos_pos_mean": float(cos[pos].mean()) if bool(pos.any()) else math.nan,
            "cos_neg_mean": float(cos[neg].mean()) if bool(neg.any()) else math.nan}


def spectrum_metrics(spec: Spectrum, lr: float) -> dict[str, float]:
    """Counts and extremes of one Hessian spectrum (Figures B.2.1, B.2.2, B.2.5) and its extreme LLEs."""
    lle = spec.local_lyapunov_exponents(lr)
    return {"n_pos": spec.n_pos, "n_neg": spec.n_neg, "n_zero": spec.n_zero, "rank": spec.rank,
            "n_above_2_over_lr": spec.n_above(2.0 / lr), "n_chaotic_local": int(spec.chaotic_mask(lr).sum()),
            "eig_max": spec.max_eigenvalue, "eig_min": spec.min_eigenvalue,
            "lle_max": float(lle.max()), "lle_min": float(lle.min())}


@dataclass
class RunResult:
    """What a finished (or diverged) run leaves: config, metric columns, arrays, status."""

    config: RunConfig
    metrics: dict[str, np.ndarray]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    status: str = "done"
    steps_done: int = 0
    diverged_at: int | None = None
    wall_time: float = 0.0
    meta: dict = field(default_factory=dict)

    def series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of a recorded metric; raises KeyError listing what was recorded."""
        if name not in self.metrics:
            names = sorted(k for k in self.metrics if not k.endswith("__step"))
            raise KeyError(f"metric {name!r} was not recorded in this run; recorded: {', '.join(names)}")
        return self.metrics[f"{name}__step"], self.metrics[name]

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


def _on_device(dataset: Dataset, device: torch.device) -> Dataset:
    """The dataset's tensors on ``device`` (the same object on the CPU: no copy)."""
    if device.type == "cpu":
        return dataset
    return dataclasses.replace(dataset, **{name: getattr(dataset, name).to(device)
                                           for name in ("train_x", "train_y", "test_x", "test_y")})


class Training:
    """The full, checkpointable state of one training run (single model, or the perturbation ensemble)."""

    def __init__(self, config: RunConfig, directions: dict[str, np.ndarray] | None = None):
        self.config = config
        self.device = torch.device(config.device)
        self.dataset = _on_device(load_dataset(config.dataset), self.device)
        self.sampler = sampler_for(self.dataset, config.batch_size, config.seed)  # its RNG stays on the CPU
        self.flat, theta0 = make_flat_model(config.model, config.activation, config.seed, _dtype(config.dtype))
        self.flat.module.to(self.device)  # initialised on the CPU (same draws everywhere), then moved
        theta0 = theta0.to(self.device)
        self.recorder = Recorder()
        self.step = 0
        self.status = "running"
        self.diverged_at: int | None = None
        self.diverged_reason: str | None = None
        self.wall_time = 0.0
        self.snapshots: dict[int, torch.Tensor] = {}
        self.arrays: dict[str, np.ndarray] = {}
        if config.is_perturbation:
            if directions is None:
                raise ValueError("a perturbation run needs the stage-1 directions")
            names = ["unperturbed", *config.perturb_strategies]
            thetas = [theta0] + [theta0 + config.perturb_eps * torch.as_tensor(directions[s], dtype=theta0.dtype,
                                                                                device=self.device)
                                 for s in config.perturb_strategies]
            self.model_names = names
        else:
            thetas = [theta0]
            self.model_names = ["model"]
        self.params = [torch.nn.Parameter(t.clone()) for t in thetas]
        self.optimizers = [self._optimizer(p) for p in self.params]
        tangent_class = Float32TangentMap if config.tangent_dtype == "float32" else TangentMap
        self.tangent = (tangent_class(self.flat.num_params, config.lr, config.momentum, device=self.device)
                        if config.uses_tangent_map else None)
        self._value_and_grad = grad_and_value(self._loss_and_logits, has_aux=True)

    # ---------------------------------------------------------------- pieces
    def _optimizer(self, param: torch.nn.Parameter) -> torch.optim.Optimizer:
        c = self.config
        if c.optimizer == "cgd":
            return CGD([param], lr=c.lr, momentum=c.momentum, prune_set=c.prune_set, k=c.prune_k,
                       select=c.prune_select, prune_start=c.prune_start, noise_std=c.prune_noise_std, seed=c.seed)
        return torch.optim.SGD([param], lr=c.lr, momentum=c.momentum)

    def _loss_and_logits(self, theta, x, y):
        logits = self.flat.forward(theta, x)
        return torch.nn.functional.cross_entropy(logits, y), logits

    def _spectrum(self, theta: torch.Tensor, x, y) -> Spectrum:
        c = self.config
        return minibatch_spectrum(self.flat, theta, x, y, method=c.spectrum_method, rtol=c.spectrum_rtol)

    def _record_models(self, name: str, step: int, values: list[float]) -> None:
        """One value per model: a scalar column for a single model, a vector column for an ensemble (padded with
        NaN for the models a diverged step did not reach)."""
        if len(self.params) == 1:
            self.recorder.add(name, step, values[0])
        else:
            self.recorder.add(name, step, values + [math.nan] * (len(self.params) - len(values)))

    def _evaluate(self, step: int) -> None:
        ds = self.dataset
        results = [self.flat.evaluate(p.detach(), ds.test_x, ds.test_y) for p in self.params]
        self._record_models("val_loss", step, [r[0] for r in results])
        self._record_models("val_acc", step, [r[1] for r in results])

    @property
    def finished(self) -> bool:
        return self.status in ("done", "diverged")

    # ---------------------------------------------------------------- one step
    def advance(self) -> None:
        """Take one training step (all models), recording what the configuration asks for.

        The loop itself: the step's batch, then each model's step (``_model_step``) with its per-step observers
        (spectrum metrics, CGD's pruning count, the tangent map) for the first model, then the losses, then the
        observers of the finished step (``_observe_step``: finite-time spectra, evaluation, distances). Any
        non-finite quantity ends the run (``_diverge``)."""
        c, t = self.config, self.step
        start = time.perf_counter()
        if t == 0:
            self._observe_step(0)
        x, y = self.sampler.batch(self.dataset, t)
        x = x.to(self.params[0].dtype)
        losses, accs = [], []
        for index, (param, opt) in enumerate(zip(self.params, self.optimizers, strict=True)):
            failure = self._model_step(index, param, opt, x, y, t, losses, accs)
            if failure is not None:
                self._diverge(t, losses, accs, f"step {t}: {failure}")
                return
        self._record_models("train_loss", t, losses)
        self._record_models("train_acc", t, accs)
        self.step = t + 1
        self._observe_step(self.step)
        self.wall_time += time.perf_counter() - start
        if self.step >= c.steps:
            self._finish()

    def _model_step(self, index: int, param: torch.nn.Parameter, opt: torch.optim.Optimizer, x: torch.Tensor,
                    y: torch.Tensor, t: int, losses: list[float], accs: list[float]) -> str | None:
        """Loss, gradient, spectrum (first model, when needed) and the optimiser step of one model at step t; the
        loss and accuracy are appended to ``losses`` / ``accs``. Returns why the run diverged, else None."""
        c = self.config
        theta = param.detach()
        g, (loss, logits) = self._value_and_grad(theta, x, y)
        loss_value = float(loss)
        losses.append(loss_value)
        accs.append(float((logits.argmax(-1) == y).float().mean()))
        if not math.isfinite(loss_value) or not bool(torch.isfinite(g).all()):
            return "non-finite loss or gradient"
        try:
            spec = self._spectrum(theta, x, y) if index == 0 and c.needs_spectrum(t) else None
        except HessianDiverged as err:  # blown up: non-finite, astronomically large, or no solver converged
            return str(err)
        if spec is not None:
            self._observe_spectrum(t, spec, g)
        param.grad = g.detach().clone()
        if isinstance(opt, CGD):
            opt.step(spectrum=spec if c.pruning_active(t) else None)
            if opt.last_plan is not None:
                self.recorder.add("n_pruned", t, opt.last_plan.n_pruned)
        else:
            opt.step()
        if self.tangent is not None and index == 0:
            try:
                self._observe_tangent(t, opt, spec)
            except FloatingPointError as err:
                return str(err)
        if not bool(torch.isfinite(param.detach()).all()):
            return "non-finite parameters after the update"
        return None

    def _observe_spectrum(self, t: int, spec: Spectrum, g: torch.Tensor) -> None:
        """Spectrum observer: counts, extremes and gradient overlaps at the steps ``spectrum_every`` asks for."""
        c = self.config
        if c.spectrum_every and t % c.spectrum_every == 0:
            for name, value in {**spectrum_metrics(spec, c.lr), **gradient_overlaps(g, spec)}.items():
                self.recorder.add(name, t, value)

    def _observe_tangent(self, t: int, opt: torch.optim.Optimizer, spec: Spectrum | None) -> None:
        """Tangent-map observer: Y <- J_t Y with the step's effective Hessian (CGD's P H when it pruned, else H)
        and the step's maximal local exponent (Theorem A.6). Raises FloatingPointError when Y blows up."""
        plan = getattr(opt, "last_plan", None)  # built from this step's spectrum (None when nothing was pruned)
        effective = factored_hessian(spec, plan.kept if plan is not None else None)  # CGD: P_keep H; factored in
        self.tangent.step(effective)  # the input subspace when the spectrum has one
        self.recorder.add("lle_max_step", t, max_local_exponent(effective, self.config.lr))

    def _observe_step(self, done: int) -> None:
        """Observers of the state after ``done`` steps (0: the initial state): finite-time spectra, evaluation,
        distances between the ensemble's models."""
        c = self.config
        if self.tangent is not None and done in c.tangent_steps:
            self._record_lyapunov(done)
        if c.eval_every and done % c.eval_every == 0:
            self._evaluate(done)
        if c.is_perturbation and done % c.distance_every == 0:
            self._record_distances(done)

    def _diverge(self, t: int, losses, accs, reason: str) -> None:
        """A non-finite loss, gradient, parameter or tangent map, or a Hessian that cannot be eigendecomposed,
        ends the run cleanly at step t (the appendix's crashed runs); ``reason`` is kept in the result."""
        self.status, self.diverged_at, self.diverged_reason = "diverged", t, reason
        self._record_models("train_loss", t, losses)
        self._record_models("train_acc", t, accs)

    def _record_distances(self, step: int) -> None:
        base = self.params[0].detach()
        self.recorder.add("distance", step, [float((p.detach() - base).norm()) for p in self.params[1:]])

    def _record_lyapunov(self, done: int) -> None:
        """The finite-time spectrum at step ``done``. Eigenvectors only where something reads them: the chaotic
        subspace at a snapshot step and after one (C.2.1's overlaps) and the perturbation directions at the last
        step; every other point records exponents only (``vectors=False``: no eigenvector, ~2-3x cheaper)."""
        c = self.config
        need_vectors = c.needs_lyapunov_vectors(done)
        ftle = self.tangent.lyapunov(tol=c.lyapunov_tol, vectors=need_vectors)
        rec = self.recorder
        rec.add("ftle_max", done, ftle.max_exponent)
        rec.add("ftle_min", done, ftle.min_exponent)
        rec.add("ftle_unresolved", done, ftle.num_unresolved)
        rec.add("ftle_uncertain", done, ftle.num_uncertain)
        rec.add("ftle_resolution", done, ftle.resolution)
        rec.add("chaotic_dim", done, ftle.chaotic_dim)
        rec.add("non_chaotic_dim", done, ftle.non_chaotic_dim)
        if not need_vectors:
            return
        chaotic = ftle.chaotic_subspace()
        for s0, basis in self.snapshots.items():
            rec.add(f"overlap_from_{s0}", done, overlap(basis, chaotic) if chaotic.shape[1] and basis.shape[1]
                    else math.nan)
        if done in c.snapshot_steps:
            self.snapshots[done] = chaotic.to(torch.float32).clone()
        if done == c.steps:
            self.arrays["ftle_exponents"] = ftle.exponents.cpu().numpy()
            directions = []
            for name in STRATEGIES:
                gen = torch.Generator().manual_seed(strategy_seed(c.seed, name))
                try:
                    d = perturbation_direction(name, exponents=ftle.decision_exponents, eigenvectors=ftle.vectors,
                                               generator=gen, tol=c.lyapunov_tol)
                except ValueError:  # empty chaotic or non-chaotic subspace
                    d = torch.full((self.flat.num_params,), math.nan, dtype=torch.float64, device=self.device)
                directions.append(d.cpu().numpy())
            self.arrays["directions"] = np.stack(directions)

    def _finish(self) -> None:
        self.status = "done"

    # ---------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict:
        return {"step": self.step, "status": self.status, "diverged_at": self.diverged_at,
                "wall_time": self.wall_time, "params": [p.detach().clone() for p in self.params],
                "optimizers": [o.state_dict() for o in self.optimizers],
                "tangent": self.tangent.state_dict() if self.tangent is not None else None,
                "recorder": self.recorder.state_dict(), "snapshots": dict(self.snapshots),
                "arrays": dict(self.arrays)}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.status = int(state["step"]), state["status"]
        self.diverged_at, self.wall_time = state["diverged_at"], float(state["wall_time"])
        with torch.no_grad():
            for p, saved in zip(self.params, state["params"], strict=True):
                p.copy_(saved)
        for o, saved in zip(self.optimizers, state["optimizers"], strict=True):
            o.load_state_dict(saved)
        if self.tangent is not None:
            self.tangent.load_state_dict(state["tangent"])
        self.recorder.load_state_dict(state["recorder"])
        self.snapshots = dict(state["snapshots"])
        self.arrays = dict(state["arrays"])

    def result(self) -> RunResult:
        arrays = dict(self.arrays)
        arrays["final_theta"] = np.stack([p.detach().double().cpu().numpy() for p in self.params])
        meta = {"models": self.model_names}
        if self.diverged_reason:
            meta["diverged_reason"] = self.diverged_reason
        return RunResult(self.config, self.recorder.arrays(), arrays, self.status, self.step, self.diverged_at,
                         self.wall_time, meta)
