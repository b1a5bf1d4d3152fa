"""Projected cost of every run of a profile, for sizing a cluster: ``chaosnb plan --profile paper``.

Seconds of one run, on one torch thread, from the per-step rates in ``RATES``:

    T = steps * models * sgd
      + n_spectrum * (spectrum[method] * (batch / 8) ** batch_exponent - sgd)
      + steps * (tangent[method] * momentum_factor - spectrum[method])    if the run carries the tangent map
      + n_reorth * reorth                                                   (the same)
      + n_ftle * ftle

* ``models`` is 1, or 1 + the number of strategies for a perturbation run.
* ``n_spectrum`` is the number of steps t with ``config.needs_spectrum(t)``: every step with CGD pruning
  or a tangent map, every ``spectrum_every``-th step otherwise.
* ``n_reorth`` x ``reorth``: the tangent map's re-orthonormalisations (:func:`reorthonormalisations`).
* ``n_ftle`` is the number of finite-time spectra, ``len(tangent_steps)``; each costs ``ftle`` seconds by the path
  :func:`chaosnb.lyapunov.finite_time_lyapunov` takes at that step (:func:`ftle_path`: the Gram matrix while the
  exponents spread over at most ``gram_max`` nats, one SVD up to ``full_max``, the graded path beyond; the spread
  is ``spread`` nats per unit of lr x t, measured) and whether it needs eigenvectors there
  (``RunConfig.needs_lyapunov_vectors``; without them: ``<path>_values``). Early points of a fresh map take the
  cheaper structured path: costed as Gram, an upper bound.
* Not modelled: evaluation (one forward pass over the test split every ``eval_every`` steps), checkpoint
  writes, CGD's projection.

Wall time: :meth:`Plan.scheduled_wall_seconds` replays the order in which :func:`chaosnb.cluster.submit_runs`
hands runs to the workers (highest :func:`priorities` first: a run's own projected seconds plus those of the
longest chain of runs waiting for it, i.e. longest-processing-time list scheduling with the stage-1 -> stage-2
dependencies), so the projection and the real schedule follow the same rule.

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
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from chaosnb.config import RunConfig

# Median seconds per training step at ONE torch thread (sweep workers run one), measured on 2 idle AMD EPYC cores
# (load average < 1, torch 2.14.1, USPS batch 8, lr 1e-2) on 2026-11-30 with benchmarks/bench_throughput.py
# --threads 1 and Training.advance() timed directly (see benchmarks/README.md, "Rates for the plan"). The MLP's
# CGD and tangent rates were measured again on 2026-12-01 at 01:15 UTC (median of 60 CGD steps / 15 tangent steps
# after warm-up steps, the quick profile's runs) after its spectrum's P^T H P moved to the closed form of
# chaosnb.one_hidden_layer: CGD 0.020 s (batch 16: 0.036 s), tangent 0.119 s, with momentum 0.163 s (before, with
# 180 Hessian-vector products: 0.085 / 0.129 / 0.206 / 0.256).
# "sgd": a plain step; "spectrum": a step with the exact Hessian spectrum (by method); "tangent": a step with the
# spectrum and the tangent-map update; "momentum": the tangent step's factor with momentum (the MLP's state then
# carries G as well: 0.163 s vs 0.119 s); "batch_exponent": spectrum cost ~ (batch / 8) ** exponent (the MLP's
# CGD step: 0.020 s at batch 8, 0.036 s at 16; the CNN's assumed); "ftle": see below. The CNN's dense rates were
# measured alone on 2026-12-01 at 02:55 UTC (one thread, idle, quick-profile runs on USPS, medians of 30 CGD / 20
# tangent steps after warm-up steps): a CGD step 0.28-0.31 s (chaotic / negative pruning), a tangent step 0.369 s,
# with momentum 0.377 s (before: 0.36 / 0.40 s, derived from measurements under load). Since its Hessian is built
# in closed form (chaosnb.multilinear, 1 Dec 2026 04:05 UTC, same conditions, medians of 20 steps after 3): a CGD
# step 0.195 s (chaotic pruning), a tangent step 0.284-0.304 s, with momentum 0.288 s (the Fashion-MNIST momentum
# run's median, 0.407 s, includes more of its 12 finite-time spectra); the exact float64 spectrum ("lowrank": the
# closed form and a float64 eigh) 0.31 s per step, with the tangent map 0.37 s (bench_throughput.py --models cnn
# --threads 1 --lr 0.03). Since the exact spectrum is deflated (range of the last convolution's rows by a sketch and
# its QR, eigh of ~700 x 700; 1 Dec 2026 06:19 UTC, same conditions, the quick profile's first 23 steps): a CGD step
# 0.153-0.155 s ("lowrank", which the book's CNN runs take since then; the float32 dense method 0.150-0.151 s on the
# same steps), a tangent step 0.203 s, with momentum 0.204 s (dense 0.227-0.228 s). Later in training the float32
# eigh fails on most Fashion-MNIST steps and falls back to float64: 400 CGD steps took 108 s dense against 61 s
# exact (two runs side by side).
# The same rates are assumed for Fashion-MNIST (same 16x16 inputs, models and batch size).
# "ftle" (MLP, benchmarks/bench_lyapunov.py --threads 1 on real USPS maps, idle): the Gram path 7.4 s exponents
# only (t = 40, lr 1e-3, before any re-orthonormalisation; forming Y = W T adds ~2 s later: 9 s); with the
# eigenvectors 20.5 s (USPS map at t = 100, lr 1e-2, one thread, 30 Nov 2026 22:45 UTC: one tridiagonal
# reduction, MRRR for the 180 chaotic vectors and the minimal one; 34-38 s before, all N by eigh); one SVD
# 71.2-75 s, singular values only 14-21 s (Fashion-MNIST maps at t = 140 and the USPS map at t = 300, lr 1e-2);
# the one-SVD path with eigenvectors 36.8 s since 1 Dec 2026 (svdvals, the chaotic vectors from the Gram matrix's
# tridiagonal reduction, the minimal one by inverse iteration; Fashion-MNIST momentum map at t = 140);
# graded: 122 s at t = 350 and 166 s (with eigenvectors) at t = 500, USPS MLP with momentum at lr 1e-2, ~25 and 31 nats
# of spread (1 Dec 2026, 11:56 and 12:42 UTC, one thread, an AVX-512 AMD EPYC host); kept at 600 s, a bound for the
# wide spreads of the paper profile's long runs, where the windows multiply, and what it took at t = 300 on the
# previous host (there LAPACK's gesdd failed on the first window
# and the fallback ran for more than 8 minutes before I stopped it). "reorth": seconds of one
# re-orthonormalisation of the tangent map (QR of the N x N block, 2N x N with momentum, and the graded product;
# USPS MLP at lr 1e-2, 200 steps, one thread, idle, 1 Dec 2026 03:40 UTC: 6 took 81 s without momentum, 5 took
# 142 s with it; before, under load, 19 / 34 s), one every "reorth_lr_steps" / lr steps: without momentum the
# block's condition bound reaches REORTH_LOG_COND = 4 nats every ~35 steps at lr 1e-2 (~425 at 1e-3); with
# momentum the adaptive interval (64 steps, doubled while the measured condition stays below half of
# MOMENTUM_LOG_COND = 12 nats) gave 2 in 200 steps at lr 1e-2 (5 with the former target of 4 nats). Since the
# graded product's triangular factor is multiplied blockwise (1 Dec 2026 06:20 UTC, one thread, idle, N = 5,350):
# the QR with its Q 7.99 s + the graded product 3.22 s (4.82 s before) = 11.2 s plain; with momentum 28.4 - 1.6 =
# 26.8 s (the same saving on its N x N graded product, not re-measured).
# "spread": nats between the largest and smallest exponent x t per unit of
# lr x t (quick build, MLP at lr 1e-2: 0.060 per step without momentum, 0.077 with); "gram_max": the Gram path is
# taken up to about this spread (t = 120 at lr 1e-2 still took it), "full_max": lyapunov.FULL_RESOLVE_MARGIN's
# ~23 nats. The CNN (N = 1,158) costs little at every path: a third of a second to a few seconds (assumed).
# "shared": how much longer a run carrying the tangent map takes when two workers share the 2 cores' memory
# bandwidth; only Plan.scheduled_wall_seconds(shared_machine=True) uses it. MLP: two tangent runs side by side
# 0.187 / 0.264 s per step against 0.206 / 0.256 s alone, two Gram spectra 36-39 s against 34.3 s (30 Nov 2026,
# 20:20 UTC, after the input-subspace step; the previous dense-pair step measured 1.36-1.7 in the quick build).
# CNN: 1.05-1.42 in that build.
RATES: dict[str, dict] = {
    "mlp": {"sgd": 0.001, "spectrum": {"lowrank": 0.020, "dense": 12.1},
            "tangent": {"lowrank": 0.119, "dense": 12.5}, "momentum": 1.37, "batch_exponent": 0.85,
            "ftle": {"gram": 21.0, "gram_values": 9.0, "full": 37.0, "full_values": 15.0, "graded": 600.0},
            "reorth": {"plain": 11.2, "momentum": 26.8}, "reorth_lr_steps": {"plain": 0.37, "momentum": 1.0},
            "spread": {"plain": 6.0, "momentum": 7.7}, "gram_max": 10.0, "full_max": 23.0, "shared": 1.1},
    "cnn": {"sgd": 0.003, "spectrum": {"lowrank": 0.153, "dense": 0.195},
            "tangent": {"lowrank": 0.203, "dense": 0.29}, "momentum": 1.0, "batch_exponent": 0.75,
            "ftle": {"gram": 0.4, "gram_values": 0.2, "full": 1.0, "full_values": 0.4, "graded": 3.0},
            "reorth": {"plain": 0.3, "momentum": 0.6}, "reorth_lr_steps": {"plain": 0.37, "momentum": 1.0},
            "spread": {"plain": 6.0, "momentum": 7.7}, "gram_max": 10.0, "full_max": 23.0, "shared": 1.2},
}
MB = 1e6


@cache
def num_params(model: str) -> int:
    from chaosnb.models import build_model
    from chaosnb.models import num_parameters as count

    return count(build_model(model))


def reorthonormalisations(config: RunConfig, rates: dict | None = None) -> int:
    """Projected re-orthonormalisations of a run's tangent map: one every ``reorth_lr_steps`` / lr steps (by
    whether the run has momentum)."""
    r = (rates or RATES)[config.model]
    every = r["reorth_lr_steps"]["momentum" if config.momentum > 0 else "plain"]
    return int(config.steps * config.lr / every) if config.uses_tangent_map else 0


def ftle_path(config: RunConfig, step: int, rates: dict | None = None) -> str:
    """The finite-time spectrum's path at ``step`` as the plan projects it: "gram", "full" or "graded" by the
    projected spread of the exponents (``spread`` x lr x step nats, see RATES)."""
    r = (rates or RATES)[config.model]
    spread = r["spread"]["momentum" if config.momentum > 0 else "plain"] * config.lr * step
    return "gram" if spread <= r["gram_max"] else ("full" if spread <= r["full_max"] else "graded")


def ftle_seconds(config: RunConfig, rates: dict | None = None) -> float:
    """Projected seconds of all the run's finite-time spectra (path and eigenvectors per step)."""
    r = (rates or RATES)[config.model]["ftle"]
    total = 0.0
    for step in config.tangent_steps:
        path = ftle_path(config, step, rates)
        total += r[path] if config.needs_lyapunov_vectors(step) or path == "graded" else r[f"{path}_values"]
    return total


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
    batch = (config.batch_size / 8) ** r.get("batch_exponent", 0.0)
    seconds = config.steps * models * r["sgd"] + spectra * (r["spectrum"][method] * batch - r["sgd"])
    n = num_params(config.model)
    tangent_bytes = 0
    if config.uses_tangent_map:
        factor = r.get("momentum", 1.0) if config.momentum > 0 else 1.0
        seconds += config.steps * (r["tangent"][method] * factor - r["spectrum"][method])
        seconds += reorthonormalisations(config) * r["reorth"]["momentum" if config.momentum > 0 else "plain"]
        tangent_bytes = n * n * 8 * (2 if config.momentum > 0 else 1)
    seconds += ftle_seconds(config, rates) if ftle else 0.0
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

    def scheduled_wall_seconds(self, workers: int, shared_machine: bool = False) -> float:
        """The wall time with ``workers`` single-threaded workers when runs start in :func:`priorities` order
        (what :func:`chaosnb.cluster.submit_runs` does), at the table's rates. ``shared_machine``: the workers
        share one machine's memory bandwidth (``make book`` on 2 cores), so the runs carrying a tangent map take
        ``shared`` times longer (RATES, measured in the quick build)."""
        def seconds(r: RunCost) -> float:
            factor = RATES[r.config.model].get("shared", 1.0) if shared_machine and r.config.uses_tangent_map else 1.0
            return r.seconds * factor

        costs = {r.config: seconds(r) for r in self.runs}
        return simulate_schedule(costs, priorities(list(costs)), workers)

    def wall_seconds_at_least(self, workers: int) -> float:
        """A lower bound on the wall time with ``workers`` single-threaded workers at the table's rates."""
        return max(self.total_seconds / workers, self.critical_path_seconds)


def priorities(configs: Sequence[RunConfig], rates: dict | None = None) -> dict[RunConfig, float]:
    """Scheduling priority of each run: its projected seconds plus the longest projected run waiting for it
    (a stage-1 run gates its perturbation runs), so the longest chains start first."""
    seconds = {c: run_cost(c, rates).seconds for c in dict.fromkeys(configs)}
    after: dict[RunConfig, float] = {}
    for c, s in seconds.items():
        if c.is_perturbation and c.stage1() in seconds:
            after[c.stage1()] = max(after.get(c.stage1(), 0.0), s)
    return {c: s + after.get(c, 0.0) for c, s in seconds.items()}


def simulate_schedule(costs: dict[RunConfig, float], order: dict[RunConfig, float], workers: int) -> float:
    """Wall time of list scheduling: each free worker takes the ready run of highest ``order``; a perturbation
    run is ready once its stage-1 run (when in ``costs``) has finished. Returns the finishing time."""
    import heapq

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    pending = sorted(costs, key=lambda c: -order[c])
    done_at: dict[RunConfig, float] = {}
    free = [0.0] * workers  # times at which each worker becomes free

    def ready(c: RunConfig, now: float) -> bool:
        return not (c.is_perturbation and c.stage1() in costs) or done_at.get(c.stage1(), math.inf) <= now

    while pending:
        now = heapq.heappop(free)
        if not any(ready(c, now) for c in pending):  # every pending run waits for a stage-1 run still going
            now = min(done_at[c.stage1()] for c in pending if c.stage1() in done_at)
        run = next(c for c in pending if ready(c, now))
        pending.remove(run)
        done_at[run] = now + costs[run]
        heapq.heappush(free, done_at[run])
    return max(done_at.values())


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
              "wall time as scheduled (longest chains first): "
              + ", ".join(f"W={w}: {_duration(p.scheduled_wall_seconds(w))}" for w in workers),
              "on one 2-core machine (2 workers sharing its memory bandwidth, as `make book`): "
              f"{_duration(p.scheduled_wall_seconds(2, shared_machine=True))}",
              "rates: chaosnb.plan.RATES (one torch thread, 2 idle AMD EPYC cores, see its comment); "
              "scale by your cores' speed"]
    return "\n".join(lines)


def as_json(p: Plan) -> dict:
    return {"runs": [{"hash": r.config.run_hash(), "label": r.config.label(), "steps": r.config.steps,
                      "models": r.models, "spectra": r.spectra, "ftle": r.ftle, "seconds": r.seconds,
                      "tangent_bytes": r.tangent_bytes, "peak_bytes": r.peak_bytes,
                      "config": dataclasses.asdict(r.config)} for r in p.runs],
            "total_seconds": p.total_seconds, "cpu_hours": p.cpu_hours, "largest": p.largest.config.run_hash(),
            "critical_path_seconds": p.critical_path_seconds, "peak_bytes": p.peak_bytes,
            "scheduled_wall_seconds": {str(w): p.scheduled_wall_seconds(w) for w in (1, 2, 8, 32, 128)}}


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
