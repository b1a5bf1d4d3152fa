"""Run configurations: one frozen dataclass per training run, validated before any work starts.

A configuration holds only what determines the numbers (data, model, optimiser, schedule, what is
recorded); its canonical hash names the run's directory in the results store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
from collections.abc import Iterable
from dataclasses import dataclass, fields

from chaosnb.cgd import PRUNE_SETS, SELECTIONS
from chaosnb.curvature import METHODS
from chaosnb.data import DATASETS, SPLIT_SIZES, canonical_dataset_name
from chaosnb.models import ACTIVATIONS, MODELS
from chaosnb.perturb import STRATEGIES

SCHEMA = 1
OPTIMIZERS = ("sgd", "cgd")
DTYPES = ("float32", "float64")
DEVICES = ("cpu", "cuda")
DEVICE_ENV = "CHAOSNB_DEVICE"
HASH_NEUTRAL_DEFAULTS = {"tangent_dtype": "float64"}
FLOAT_FIELDS = ("lr", "momentum", "prune_noise_std", "spectrum_rtol", "lyapunov_tol", "perturb_eps")


class ConfigError(ValueError):
    """An invalid run configuration; the message names the field."""


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a training run's numbers.

    Recording cadences are in steps (0 = never). ``tangent_steps`` are the steps (number of updates taken)
    at which the finite-time Lyapunov spectrum of the tangent map is computed; giving any switches the
    tangent map on, which needs the exact Hessian at every step. ``snapshot_steps`` (a subset of
    ``tangent_steps``) are where the chaotic subspace is kept to measure later overlaps (Figure C.2.1).
    A perturbation run (``perturb_eps`` > 0) trains an unperturbed model and one model per strategy from
    theta_0 + eps d on the same batches; the directions come from the stage-1 run ``stage1()``, which is the
    same configuration without perturbation, with the tangent map taken to the final step.

    ``device`` ("cpu" or "cuda"; default ``$CHAOSNB_DEVICE``, else "cpu") is where every tensor of the run lives
    (the batch sampler's and the probes' RNGs stay on the CPU, so a seed gives the same batches everywhere). It is
    part of the hash for "cuda" only: a GPU's kernels round differently and SGD is chaotic, so a GPU run is another
    trajectory after a few hundred steps and must never stand in for the CPU result (or vice versa); "cpu" is left
    out of the hash so every CPU run keeps the hash (and cached result) it had before the option existed. Which GPU
    is used (``CUDA_VISIBLE_DEVICES``) is not part of it.
    """

    dataset: str = "usps"
    model: str = "mlp"
    activation: str = "relu"
    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.0
    batch_size: int = 8
    steps: int = 1000
    seed: int = 42
    dtype: str = "float32"
    # CGD (Theorem A.7)
    prune_set: str = "chaotic"
    prune_k: int | None = None
    prune_select: str = "top_abs"
    prune_start: int = 0
    prune_noise_std: float = 0.0
    # spectra
    spectrum_method: str = "lowrank"
    spectrum_rtol: float = 1e-5
    spectrum_every: int = 0
    # tangent map / finite-time Lyapunov
    tangent_steps: tuple[int, ...] = ()
    snapshot_steps: tuple[int, ...] = ()
    lyapunov_tol: float = 1e-12
    tangent_dtype: str = "float64"  # "float32": the authors' numerics (dense float32 Y_t, eigh of Y^T Y in float32)
    # validation
    eval_every: int = 0
    # perturbation experiments (stage 2)
    perturb_eps: float = 0.0
    perturb_strategies: tuple[str, ...] = ()
    distance_every: int = 1
    # where the run computes (not in the hash for "cpu"; see above)
    device: str | None = None

    def __post_init__(self):
        # equal configurations must hash equally: lr=1 and lr=1.0 (YAML ints) are the same run
        for name in FLOAT_FIELDS:
            object.__setattr__(self, name, _as_float(name, getattr(self, name)))
        device = (os.environ.get(DEVICE_ENV) or "cpu") if self.device is None else self.device
        origin = f" (from ${DEVICE_ENV})" if self.device is None else ""
        if not isinstance(device, str) or device.strip().lower() not in DEVICES:
            raise ConfigError(f"device: unknown value {device!r}{origin}; valid values are: {', '.join(DEVICES)} "
                              "(choose the GPU with CUDA_VISIBLE_DEVICES)")
        object.__setattr__(self, "device", device.strip().lower())
        object.__setattr__(self, "dataset", _check_choice("dataset", canonical_dataset_or_error(self.dataset),
                                                          DATASETS))
        for name, options in (("model", MODELS), ("activation", tuple(ACTIVATIONS)), ("optimizer", OPTIMIZERS),
                              ("prune_set", PRUNE_SETS), ("prune_select", SELECTIONS),
                              ("spectrum_method", METHODS), ("dtype", DTYPES), ("tangent_dtype", DTYPES)):
            _check_choice(name, getattr(self, name), options)
        for name in ("tangent_steps", "snapshot_steps", "perturb_strategies"):
            value = getattr(self, name)
            if isinstance(value, str | bytes) or not isinstance(value, Iterable):
                raise ConfigError(f"{name}: must be a list, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        for name in ("tangent_steps", "snapshot_steps"):
            object.__setattr__(self, name, tuple(sorted({_integer(name, v) for v in getattr(self, name)})))
        _positive("lr", self.lr)
        _positive_int("batch_size", self.batch_size)
        n_train = SPLIT_SIZES[self.dataset]["train"]
        if self.batch_size > n_train:
            raise ConfigError(f"batch_size: {self.batch_size} is larger than the {self.dataset} training set "
                              f"({n_train} samples)")
        _positive_int("steps", self.steps)
        _positive_int("distance_every", self.distance_every)
        _non_negative_int("seed", self.seed)
        for name in ("spectrum_every", "eval_every", "prune_start"):
            _non_negative_int(name, getattr(self, name))
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum: must be in [0, 1), got {self.momentum!r}")
        if self.prune_k is not None:
            _positive_int("prune_k", self.prune_k)
        if self.prune_noise_std < 0:
            raise ConfigError(f"prune_noise_std: must be >= 0, got {self.prune_noise_std!r}")
        if self.spectrum_rtol < 0:
            raise ConfigError(f"spectrum_rtol: must be >= 0 (0: no zero tolerance, the paper's numerics), got "
                              f"{self.spectrum_rtol!r}")
        if self.tangent_dtype == "float32" and (self.momentum or self.optimizer != "sgd" or self.is_perturbation):
            raise ConfigError("tangent_dtype: the float32 tangent map (the paper's numerics) supports plain SGD "
                              "without momentum or perturbation only; use tangent_dtype='float64'")
        if self.lyapunov_tol < 0:
            raise ConfigError(f"lyapunov_tol: must be >= 0, got {self.lyapunov_tol!r}")
        bad = [s for s in self.tangent_steps if not 0 < s <= self.steps]
        if bad:
            raise ConfigError(f"tangent_steps: every step must be in 1..steps={self.steps}, got {bad}")
        missing = sorted(set(self.snapshot_steps) - set(self.tangent_steps))
        if missing:
            raise ConfigError(f"snapshot_steps: {missing} are not in tangent_steps (the exponents are computed "
                              "only there)")
        for s in self.perturb_strategies:
            if s not in STRATEGIES:
                raise ConfigError(f"perturb_strategies: unknown strategy {s!r}; valid strategies are: "
                                  f"{', '.join(STRATEGIES)}")
        if self.perturb_eps < 0:
            raise ConfigError(f"perturb_eps: must be >= 0, got {self.perturb_eps!r}")
        if (self.perturb_eps > 0) != bool(self.perturb_strategies):
            raise ConfigError("perturb_eps / perturb_strategies: a perturbation run needs both eps > 0 and at "
                              "least one strategy")
        if self.perturb_eps > 0 and self.optimizer != "sgd":
            raise ConfigError("optimizer: perturbation runs train with plain SGD (optimizer='sgd')")

    # ------------------------------------------------------------------ derived views
    @property
    def is_perturbation(self) -> bool:
        return self.perturb_eps > 0

    @property
    def uses_tangent_map(self) -> bool:
        """Stage-2 perturbation runs leave the tangent map to their stage-1 run."""
        return bool(self.tangent_steps) and not self.is_perturbation

    def pruning_active(self, step: int) -> bool:
        return self.optimizer == "cgd" and step >= self.prune_start

    def needs_spectrum(self, step: int) -> bool:
        """Whether the Hessian spectrum must be computed at training step ``step`` (0-based)."""
        return (self.pruning_active(step) or self.uses_tangent_map
                or (self.spectrum_every > 0 and step % self.spectrum_every == 0))

    def needs_lyapunov_vectors(self, step: int) -> bool:
        """Whether the finite-time spectrum at tangent step ``step`` needs eigenvectors: at the last step (the
        perturbation directions), at a snapshot step and at every tangent step after the first one (Figure C.2.1's
        overlaps). Elsewhere the exponents alone are recorded (``TangentMap.lyapunov(vectors=False)``)."""
        snapshots = [s for s in self.snapshot_steps if s in self.tangent_steps]
        return step == self.steps or any(s <= step for s in snapshots)

    def stage1(self) -> RunConfig:
        """The reference run whose final L_T provides the perturbation directions."""
        return dataclasses.replace(self, perturb_eps=0.0, perturb_strategies=(),
                                   tangent_steps=tuple(sorted(set(self.tangent_steps) | {self.steps})),
                                   snapshot_steps=self.snapshot_steps, distance_every=1, eval_every=0)

    def to_dict(self) -> dict:
        """Canonical, JSON-serialisable form (tuples as lists). Fields added after the first results were stored
        (``HASH_NEUTRAL_DEFAULTS``) are left out at their default, so existing runs keep their hashes."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if HASH_NEUTRAL_DEFAULTS.get(f.name, object()) == value:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"a configuration must be a mapping of field: value, got {type(data).__name__} "
                              f"{data!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown field(s) {unknown}; valid fields are: {', '.join(sorted(known))}")
        return cls(**data)

    def run_hash(self) -> str:
        """Canonical hash (16 hex digits) of every field that determines the numbers."""
        fields_ = self.to_dict()
        if fields_["device"] == "cpu":  # CPU runs keep the hashes they had before ``device`` existed
            del fields_["device"]
        payload = json.dumps({"schema": SCHEMA, **fields_}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def label(self) -> str:
        """Short human-readable description."""
        opt = self.optimizer if self.optimizer == "sgd" else f"cgd[{self.prune_set}]"
        parts = [self.dataset, f"{self.model}-{self.activation}" if self.model == "mlp" else self.model, opt,
                 f"lr={self.lr:g}", f"bs={self.batch_size}", f"steps={self.steps}", f"seed={self.seed}"]
        if self.momentum:
            parts.append(f"mom={self.momentum:g}")
        if self.optimizer == "cgd" and self.prune_start:
            parts.append(f"start={self.prune_start}")
        if self.is_perturbation:
            parts.append(f"eps={self.perturb_eps:g}")
        if self.device != "cpu":
            parts.append(self.device)
        return " ".join(parts)


def check_device_available(device: str) -> None:
    """Raise :class:`ConfigError` (one line naming the option) when ``device`` cannot compute on this machine."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"device: 'cuda' was asked for (--device or ${DEVICE_ENV}) but torch "
                              f"{torch.__version__} sees no CUDA device on this machine (CUDA build: "
                              f"{torch.version.cuda or 'none'}); use --device cpu, or run on a GPU node")


def canonical_dataset_or_error(name: str) -> str:
    try:
        return canonical_dataset_name(name)
    except ValueError as err:
        raise ConfigError(f"dataset: {err}") from None


def _check_choice(name: str, value, options) -> str:
    if value not in options:
        raise ConfigError(f"{name}: unknown value {value!r}; valid values are: {', '.join(map(str, options))}")
    return value


def _as_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name}: must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name}: must be a finite number, got {value!r}")
    return float(value) + 0.0  # + 0.0 turns -0.0 into 0.0


def _integer(name: str, value) -> int:
    """An integer entry of a list field: ints, or floats that are whole numbers (3.0); never 2.7 or "a"."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value).is_integer():
        raise ConfigError(f"{name}: every entry must be a whole number, got {value!r}")
    return int(value)


def _positive(name: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ConfigError(f"{name}: must be a positive number, got {value!r}")


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}: must be a positive integer, got {value!r}")


def _non_negative_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name}: must be a non-negative integer, got {value!r}")


def log_spaced_steps(last: int, per_decade: int = 8, first: int = 1) -> tuple[int, ...]:
    """Roughly log-spaced integer steps from ``first`` to ``last`` (inclusive), for Lyapunov spectra."""
    import numpy as np

    if last < first:
        return ()
    n = max(2, int(np.ceil(np.log10(last / first) * per_decade)) + 1)
    return tuple(sorted(set(int(round(v)) for v in np.geomspace(first, last, n))))
