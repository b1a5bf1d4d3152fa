"""Projected cost of every run of a profile, for sizing a cluster: ``chaosnb plan --profile paper``.

Seconds of one run, on one torch thread, from the per-step rates in ``RATES``:

    T = steps * models * sgd
      + n_spectrum * (spectrum[method] - sgd)
      + steps * (tangent[method] - spectrum[method])    if the run carries the tangent map
      + n_ftle * ftle

* ``models`` is 1, or 1 + the number of strategies for a perturbation run.
* ``n_spectrum`` is the number of steps t with ``config.needs_spectrum(t)``: every step with CGD pruning
  or a tangent map, every ``spectrum_every``-th step otherwise.
* ``n_ftle`` is the number of finite-time spectra, ``len(tangent_steps)``. Each is costed as a full SVD.
  That is an upper bound: early ones take the cheaper structured path.
* Not modelled: evaluation (one forward pass over the test split every ``eval_every`` steps), checkpoint
  writes, CGD's projection, and the momentum term G of the tangent map (assumed as fast as without).

Memory of one run, in bytes, counting only its largest arrays (float64 unless stated):

* The tangent map is Y, N x N, plus G, N x N, with momentum: ``N^2 * 8 * (1 + [momentum > 0])``. For the
  MLP (N = 5,350) that is 229 MB, or 458 MB with momentum.
* The peak estimate adds the larger of two transients to the tangent map. The first is a checkpoint: the
  state's clone plus its serialised bytes, 2 x the tangent map. The second is a finite-time spectrum: the
  unscaled Y, U and V^T, 3 N^2 * 8. A dense Hessian spectrum adds the float32 Hessian and its
  eigenvectors, 2 N^2 * 4.
* Not included: the interpreter, torch and the dataset, which every process has.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from chaosnb.config import RunConfig

# Median seconds per training step at ONE torch thread (sweep workers run one), from benchmarks/README.md,
# "Training throughput", the `--threads 1` table (2 shared AMD EPYC cores, load average 3-4, torch 2.14.1,
# USPS batch 8). "sgd": a plain step; "spectrum": a step with the exact Hessian spectrum (by method);
# "tangent": a step with the spectrum and the tangent-map update; "ftle": one finite-time spectrum (SVD of
# Y), seconds each: the MLP's measured at one thread (100-109 s), the CNN's only at two threads (0.3-0.5 s).
# The same rates are assumed for Fashion-MNIST (same 16x16 inputs, models and batch size).
RATES: dict[str, dict] = {
    "mlp": {"sgd": 0.001, "spectrum": {"lowrank": 0.35, "dense": 29.6},
            "tangent": {"lowrank": 1.56, "dense": 48.6}, "ftle": 105.0},
    "cnn": {"sgd": 0.002, "spectrum": {"lowrank": 2.11, "dense": 0.63},
            "tangent": {"lowrank": 2.18, "dense": 0.67}, "ftle": 0.5},
}
MB = 1e6


@cache
def num_params(model: str) -> int:
    from chaosnb.models import build_model
    from chaosnb.models import num_parameters as count

    return count(build_model(model))


def spectrum_steps(config: RunConfig) -> int:
    """How many of the steps 0..steps-1 compute the Hessian spectrum (``RunConfig.needs_spectrum``),
    without iterating over them: all with a tangent map; else the pruned ones (t >= prune_start, CGD)
    plus, before those, every ``spectrum_every``-th."""
    if config.uses_tangent_map:
        return config.steps
    every = config.spectrum_every
    pruned_from = min(config.prune_start, config.steps) if config.optimizer == "cgd" else config.steps
    logged = -(-pruned_from // every) if every else 0  # t in [0, pruned_from) with t % every == 0
    return (config.steps - pruned_from) + logged


@dataclass(frozen=True)
class RunCost:
    """Projected cost of one run (see the module docstring for the formulas)."""

    config: RunConfig
    models: int
    spectra: int
    ftle: int
    seconds: float
    tangent_bytes: int
    peak_bytes: int

    @property
    def hours(self) -> float:
        return self.seconds / 3600


def run_cost(config: RunConfig, rates: dict | None = None) -> RunCost:
    """Projected seconds and memory of one run."""
    r = (rates or RATES)[config.model]
    method = config.spectrum_method
    models = 1 + len(config.perturb_strategies)
    spectra = spectrum_steps(config)
    ftle = len(config.tangent_steps) if config.uses_tangent_map else 0
    seconds = config.steps * models * r["sgd"] + spectra * (r["spectrum"][method] - r["sgd"])
    n = num_params(config.model)
    tangent_bytes = 0
    if config.uses_tangent_map:
        seconds += config.steps * (r["tangent"][method] - r["spectrum"][method])
        tangent_bytes = n * n * 8 * (2 if config.momentum > 0 else 1)
    seconds += ftle * r["ftle"]
    transient = max(2 * tangent_bytes, 3 * n * n * 8 if ftle else 0)
    dense = 2 * n * n * 4 if spectra and method == "dense" else 0
    return RunCost(config, models, spectra, ftle, seconds, tangent_bytes, tangent_bytes + transient + dense)


@dataclass(frozen=True)
class Plan:
    """Every run with its cost, and the numbers that size a cluster."""

    runs: tuple[RunCost, ...]

    @property
    def total_seconds(self) -> float:
        return sum(r.seconds for r in self.runs)

    @property
    def cpu_hours(self) -> float:
        return self.total_seconds / 3600

    @property
    def largest(self) -> RunCost:
        return max(self.runs, key=lambda r: r.seconds)

    @property
    def peak_bytes(self) -> int:
        """The largest per-run peak: what one worker process needs beyond its baseline."""
        return max(r.peak_bytes for r in self.runs)

    @property
    def critical_path_seconds(self) -> float:
        """The longest chain of runs that must follow one another (a perturbation run after its stage 1)."""
        by_config = {r.config: r.seconds for r in self.runs}
        return max(r.seconds + (by_config.get(r.config.stage1(), 0.0) if r.config.is_perturbation else 0.0)
                   for r in self.runs)

    def wall_seconds_at_least(self, workers: int) -> float:
        """A lower bound on the wall time with ``workers`` single-threaded workers at the table's rates."""
        return max(self.total_seconds / workers, self.critical_path_seconds)


def plan(configs: Sequence[RunConfig], rates: dict | None = None) -> Plan:
    if not configs:
        raise ValueError("nothing to plan: no run configurations")
    return Plan(tuple(run_cost(c, rates) for c in dict.fromkeys(configs)))


def plan_profile(profile: str, overrides: dict | None = None) -> Plan:
    """The plan of every run the book needs at ``profile`` (``experiments.all_configs``)."""
    from chaosnb.experiments import all_configs, load_profile

    return plan(all_configs(load_profile(profile, overrides)))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def format_plan(p: Plan, title: str, workers: Sequence[int] = (1, 8, 32, 128)) -> str:
    """The table of runs (most expensive first) and the totals, as text."""
    lines = [title, "", f"{'hash':<16}  {'steps':>7} {'spectra':>7} {'FTLE':>4} {'time':>8} {'tangent':>8} "
             f"{'peak':>8}  run", ""]
    lines[-1] = "-" * len(lines[-2])
    for r in sorted(p.runs, key=lambda r: -r.seconds):
        c = r.config
        lines.append(f"{c.run_hash():<16}  {c.steps:>7} {r.spectra:>7} {r.ftle:>4} {_duration(r.seconds):>8} "
                     f"{r.tangent_bytes / MB:>6.0f}MB {r.peak_bytes / MB:>6.0f}MB  {c.label()}")
    big = p.largest
    lines += ["", f"runs: {len(p.runs)}",
              f"total: {p.cpu_hours:,.1f} CPU-hours (one torch thread per run)",
              f"largest run: {_duration(big.seconds)} ({big.hours:,.1f} h), {big.config.label()} "
              f"[{big.config.run_hash()}]",
              f"longest chain (a perturbation run after its stage-1 run): {_duration(p.critical_path_seconds)}",
              f"peak memory per run (estimate, largest arrays): {p.peak_bytes / MB:,.0f} MB, plus the process "
              "baseline (interpreter, torch, dataset)",
              "wall time at least, with W single-threaded workers: "
              + ", ".join(f"W={w}: {_duration(p.wall_seconds_at_least(w))}" for w in workers),
              "rates: chaosnb.plan.RATES (benchmarks/README.md, one torch thread, 2 shared EPYC cores); "
              "scale by your cores' speed"]
    return "\n".join(lines)


def as_json(p: Plan) -> dict:
    return {"runs": [{"hash": r.config.run_hash(), "label": r.config.label(), "steps": r.config.steps,
                      "models": r.models, "spectra": r.spectra, "ftle": r.ftle, "seconds": r.seconds,
                      "tangent_bytes": r.tangent_bytes, "peak_bytes": r.peak_bytes,
                      "config": dataclasses.asdict(r.config)} for r in p.runs],
            "total_seconds": p.total_seconds, "cpu_hours": p.cpu_hours, "largest": p.largest.config.run_hash(),
            "critical_path_seconds": p.critical_path_seconds, "peak_bytes": p.peak_bytes}


def cmd_plan(args: argparse.Namespace) -> int:
    import sys

    try:
        overrides = json.loads(args.overrides) if args.overrides else None
        p = plan_profile(args.profile, overrides)
    except (ValueError, KeyError, TypeError) as err:  # unknown profile, bad JSON or override
        print(f"error: cannot plan profile {args.profile!r}: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(as_json(p), indent=2))
    else:
        workers = tuple(args.workers) if args.workers else (1, 8, 32, 128)
        print(format_plan(p, f"plan of profile {args.profile!r}: every run of the book, projected", workers))
    return 0


def add_subcommand(sub) -> None:
    parser = sub.add_parser("plan", help="list every run of a profile with its projected time and memory")
    parser.add_argument("--profile", default="quick", help="smoke, quick or paper (chaosnb/profiles.yaml)")
    parser.add_argument("--overrides", default=None, help="JSON merged into the profile, as the book's overrides")
    parser.add_argument("--workers", type=int, nargs="+", help="worker counts for the wall-time bound")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=cmd_plan)
