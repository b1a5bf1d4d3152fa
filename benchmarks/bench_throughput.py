"""Training throughput (steps per second) of ``chaosnb.train.Training`` with and without exact spectra.

Modes, for the MLP and the CNN on USPS (RunConfig defaults otherwise: lr 1e-3, seed 42, float32):

* sgd              : plain SGD, no spectrum;
* spectrum-dense   : the exact Hessian spectrum every step (spectrum_every=1), method "dense";
* spectrum-lowrank : the same with method "lowrank";
* tangent-dense    : the tangent map Y_t (N x N, float64) updated every step (tangent_steps=(steps,)), its
                     per-step spectrum by "dense";
* tangent-lowrank  : the same with "lowrank".

All Training objects are built first, then run in --rounds blocks (default 3): in each round every mode in
turn takes its share of timed steps back to back, so all modes sample the same stretches of machine load and
the ratios (of median step times) against the dense mode of the same model come from the same run. The first
block starts with --warmup untimed steps, every later one with --rewarm (1) untimed step: the first step after
another mode ran (a dense step frees GBs) is often several times slower than the next.

Modes that compute a dense Hessian or carry an N x N tangent map every step are "slow" and take only
--slow-steps steps (after --slow-warmup): the MLP's tangent modes, and the CNN's spectrum and tangent modes
(the CNN's low-rank spectrum falls back to the dense one at batch 8, whose rank ~550-600 exceeds 0.4 N). The
MLP's spectrum-dense and tangent-dense modes (20-90 s a step on 2 shared cores) take --expensive-warmup = 0
untimed steps (their start-up costs < 1 s) and no re-warm steps. --skip-slow drops the MLP's slow modes. The
one finite-time Lyapunov spectrum a tangent run computes at its last step (TangentMap.lyapunov and the
perturbation directions, in Training._record_lyapunov) is timed separately and excluded from the per-step time
(for the MLP it used to be a 5,350 x 5,350 float64 SVD; see bench_lyapunov.py for the faster paths).
Training writes nothing; CHAOSNB_RESULTS still points at a temporary folder, removed at exit.

    CHAOSNB_DATA=../shared/data .venv/bin/python benchmarks/bench_throughput.py   # ~5 min on 2 idle cores
    .venv/bin/python benchmarks/bench_throughput.py --models mlp   # the same in two runs (ratios are per model)
    .venv/bin/python benchmarks/bench_throughput.py --models cnn
    .venv/bin/python benchmarks/bench_throughput.py --skip-slow --steps 50
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MODES = ("sgd", "spectrum-dense", "spectrum-lowrank", "tangent-dense", "tangent-lowrank")
# the paper profile's length in steps: USPS 40 epochs at batch 8 (912 steps each); Fashion-MNIST 300,000
PAPER_STEPS = {"USPS (36,480 steps)": 36_480, "Fashion-MNIST (300,000 steps)": 300_000}


def set_data_root(path: str | None) -> None:
    """--data, else $CHAOSNB_DATA, else ../shared/data beside the repository (as the Makefile does)."""
    if path:
        os.environ["CHAOSNB_DATA"] = str(Path(path).resolve())
    elif not os.environ.get("CHAOSNB_DATA") and (ROOT.parent / "shared" / "data").exists():
        os.environ["CHAOSNB_DATA"] = str(ROOT.parent / "shared" / "data")


def is_slow(model: str, mode: str) -> bool:
    if mode == "sgd":
        return False
    if model == "mlp":
        return mode != "spectrum-lowrank"
    return True  # CNN at batch 8: lowrank falls back to dense


def is_skippable(model: str, mode: str) -> bool:
    """What --skip-slow drops: the MLP's dense spectrum and tangent modes."""
    return model == "mlp" and is_slow(model, mode)


def make_config(model: str, mode: str, total: int, args):
    from chaosnb.config import RunConfig

    base = {"dataset": "usps", "model": model, "batch_size": args.batch, "steps": total, "seed": args.seed,
            "lr": args.lr}
    if mode == "sgd":
        return RunConfig(**base)
    method = mode.split("-")[1]
    if mode.startswith("spectrum"):
        return RunConfig(**base, spectrum_method=method, spectrum_every=1)
    return RunConfig(**base, spectrum_method=method, tangent_steps=(total,))


def is_expensive(model: str, mode: str) -> bool:
    """Modes whose single step costs tens of seconds (a dense 5,350 x 5,350 MLP spectrum): no re-warm step."""
    return model == "mlp" and mode in ("spectrum-dense", "tangent-dense")


@dataclass
class Job:
    """One mode of one model: its Training and, per round, (untimed steps, timed steps) run back to back."""

    model: str
    mode: str
    plan: list[tuple[int, int]]
    training: object = None
    step_s: list[float] = field(default_factory=list)
    ftle_s: list[float] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(w + t for w, t in self.plan)

    @property
    def warmup(self) -> int:
        return sum(w for w, _ in self.plan)

    def build(self, args) -> None:
        from chaosnb.train import Training

        self.training = Training(make_config(self.model, self.mode, self.total, args))
        original = self.training._record_lyapunov

        def timed_record(done: int) -> None:  # instrumentation only: time the finite-time spectrum
            start = time.perf_counter()
            original(done)
            self.ftle_s.append(time.perf_counter() - start)

        self.training._record_lyapunov = timed_record

    def advance(self, timed: bool) -> float:
        before = len(self.ftle_s)
        start = time.perf_counter()
        self.training.advance()
        elapsed = time.perf_counter() - start
        if len(self.ftle_s) > before:
            elapsed -= self.ftle_s[-1]
        if timed:
            self.step_s.append(elapsed)
        if self.training.status == "diverged":
            raise RuntimeError(f"{self.model} {self.mode} diverged at step {self.training.diverged_at}")
        return elapsed

    @property
    def steps_per_s(self) -> float:
        return len(self.step_s) / sum(self.step_s) if self.step_s else math.nan


def make_plan(steps: int, rounds: int, warmup: int, rewarm: int) -> list[tuple[int, int]]:
    """Split ``steps`` timed steps over ``rounds`` blocks; the first block starts with ``warmup`` untimed steps,
    every later non-empty block with ``rewarm`` (the first step after another mode ran is often slow: caches,
    allocator and page state were the other mode's)."""
    plan = []
    for r in range(rounds):
        timed = steps // rounds + (1 if r < steps % rounds else 0)
        plan.append((warmup if r == 0 else (rewarm if timed else 0), timed))
    return plan


def load() -> str:
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "?"


def fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def report(jobs: list[Job]) -> list[dict]:
    rows = []
    by_key = {(j.model, j.mode): j for j in jobs}
    for j in jobs:
        ref_mode = "tangent-dense" if j.mode.startswith("tangent") else "spectrum-dense"
        ref = by_key.get((j.model, ref_mode))
        median = statistics.median(j.step_s)
        ratio = statistics.median(ref.step_s) / median if ref is not None and ref.step_s else math.nan
        row = {"model": j.model, "mode": j.mode, "steps": len(j.step_s), "untimed": j.warmup,
               "steps_per_s": j.steps_per_s, "s_per_step_mean": 1.0 / j.steps_per_s,
               "s_per_step_median": median, "vs": ref_mode, "ratio_vs_dense": ratio,
               "ftle_s": j.ftle_s[-1] if j.ftle_s else None,
               "projection_s": {name: n * median for name, n in PAPER_STEPS.items()}}
        rows.append(row)
    head = (f"{'model':<6}{'mode':<18}{'steps':>6}{'steps/s':>10}{'mean s':>9}{'median s':>10}{'x vs dense':>12}"
            f"{'ftle s':>12}" + "".join(f"{name.split(' ')[0] + ' proj.':>20}" for name in PAPER_STEPS))
    print("\n== throughput (per-step time excludes warm-up and the final finite-time spectrum) ==")
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio = f"{r['ratio_vs_dense']:.2f}x" if math.isfinite(r["ratio_vs_dense"]) else "-"
        ftle = f"{r['ftle_s']:.1f}" if r["ftle_s"] is not None else "-"
        proj = "".join(f"{fmt_duration(s):>20}" for s in r["projection_s"].values())
        print(f"{r['model']:<6}{r['mode']:<18}{r['steps']:>6}{r['steps_per_s']:>10.3f}{r['s_per_step_mean']:>9.3f}"
              f"{r['s_per_step_median']:>10.3f}{ratio:>12}{ftle:>12}{proj}")
    print("  steps/s = timed steps / their total time; mean s and median s per step. x vs dense: median s/step of "
          "the dense\n  mode of the same model (spectrum-dense for sgd and spectrum-*, tangent-dense for tangent-*) "
          "over this mode's,\n  same run (medians: robust to load spikes from other processes). Projections: median "
          "s/step x paper-profile\n  steps, without evaluation, checkpointing or finite-time spectra (each costs "
          "'ftle s' more); Fashion-MNIST\n  assumes the USPS per-step cost (same 16x16 inputs, models and batch "
          "size).")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated (default mlp,cnn)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of the fast modes (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of the fast modes (default 2)")
    parser.add_argument("--slow-steps", type=int, default=3, help="timed steps of the slow modes (default 3)")
    parser.add_argument("--slow-warmup", type=int, default=1, help="untimed steps of the slow modes (default 1)")
    parser.add_argument("--expensive-warmup", type=int, default=0,
                        help="untimed steps of the MLP's spectrum-dense and tangent-dense modes (default 0: a "
                             "step costs 20-90 s, its start-up < 1 s)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="the timed steps of every mode are split into this many blocks, run mode after mode "
                             "(default 3)")
    parser.add_argument("--rewarm", type=int, default=1,
                        help="untimed steps at the start of every later block (default 1; none for the MLP's "
                             "dense modes)")
    parser.add_argument("--skip-slow", action="store_true", help="skip the MLP's dense-spectrum and tangent modes")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8, the paper's USPS runs)")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate (RunConfig's default)")
    parser.add_argument("--seed", type=int, default=42, help="seed (RunConfig's default)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--data", default=None, help="data root (default $CHAOSNB_DATA or ../shared/data)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in models if m not in ("mlp", "cnn")] + [m for m in modes if m not in MODES]
    if bad:
        parser.error(f"unknown model(s)/mode(s): {bad}")
    if min(args.steps, args.slow_steps, args.rounds) < 1 or min(args.warmup, args.slow_warmup, args.rewarm,
                                                                  args.expensive_warmup) < 0:
        parser.error("steps and rounds must be >= 1, warm-ups >= 0")
    set_data_root(args.data)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="chaosnb-bench-") as results_dir:
        os.environ["CHAOSNB_RESULTS"] = results_dir
        jobs = []
        for model in models:
            for mode in modes:
                if args.skip_slow and is_skippable(model, mode):
                    continue
                slow = is_slow(model, mode)
                expensive = is_expensive(model, mode)
                first = args.expensive_warmup if expensive else args.slow_warmup if slow else args.warmup
                plan = make_plan(args.slow_steps if slow else args.steps, args.rounds, first,
                                 0 if expensive else args.rewarm)
                jobs.append(Job(model, mode, plan))
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
              f"USPS, batch {args.batch}, lr {args.lr:g}, seed {args.seed}; load average {load()}")
        start = time.perf_counter()
        for dtype in (torch.float32, torch.float64):  # LAPACK / thread-pool start-up, outside every timing
            a = torch.randn(64, 64, dtype=dtype)
            torch.linalg.eigh(a + a.T)
            torch.linalg.svd(a)
        for job in jobs:
            job.build(args)
        for r in range(args.rounds):
            for job in jobs:
                warm, timed = job.plan[r]
                times = [job.advance(timed=False) for _ in range(warm)]
                times += [job.advance(timed=True) for _ in range(timed)]
                if not times:
                    continue
                extra = f" (+ finite-time spectrum {job.ftle_s[-1]:.1f} s)" if job.training.finished and job.ftle_s \
                    else ""
                shown = ", ".join(f"{t:.2f}" for t in times[:warm]) or "-"
                timed_s = f"median {statistics.median(times[warm:]):.3f} s" if timed else "-"
                print(f"  round {r}: {job.model:<4}{job.mode:<17} untimed [{shown}] s, {timed} timed: {timed_s}"
                      f"{extra}  [load {load()}]", flush=True)
        rows = report(jobs)
        total = time.perf_counter() - start
        print(f"\ntotal {total:.0f} s; load average at the end {load()}")
    if args.json:
        payload = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                   "args": {k: v for k, v in vars(args).items() if k != "json"}, "rows": rows, "total_s": total}
        Path(args.json).write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
