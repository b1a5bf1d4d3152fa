"""Tangent-map step (issue 10, target 3) and finite-time spectrum (target 4) for the MLP (N = 5,350), float64.

Target 3 (one step of Y <- (I - lr V diag(lam) V^T) Y with a rank-r pair, r = 218 by default):
  floor = the two float64 products of that step's shapes, timed back to back in the same repetition:
          P = V^T Y (r x N) and V P (N x N), into preallocated outputs;
  old   = the previous step (Y - lr * (V @ (lam * (V^T Y))) with its N x N temporaries and the per-step
          exact rescale: a max|Y| pass and a power-of-two multiply);
  new   = ``TangentMap.step``: one product V^T W, lam scaling of the r x N block, one in-place addmm with
          alpha = -lr; no rescale pass (the block's norm is bounded by the re-orthonormalisation budget).
  PASS if new <= 1.3 x floor (medians over --repeats interleaved repetitions). The re-orthonormalisation (QR of
  the block + the graded product, every ~REORTH_LOG_COND / (lr (max lam - min lam)) steps) is timed once and
  reported amortised per step.
  factored = the step the engine takes for the MLP since its spectrum comes from P^T H P: V = P C with P the input
          subspace of a real USPS batch (d = 390), same rank, timed in the same repetitions and printed as a
          multiple of the dense pair's floor (below 1: it does less work than that floor, ~8x fewer flops; it is
          bound by reading Y once and updating its first-layer rows once).
Target 4 (one finite-time spectrum of a real MLP tangent map after --steps training steps on USPS, batch 8, lr
  1e-3, low-rank spectra as the engine computes them):
  old = the previous path: the full 5,350 x 5,350 SVD of the scaled Y_t (``method="full"``);
  new = ``TangentMap.lyapunov`` as the engine calls it at a point with a snapshot or at the last step
        (``method="auto"``, tol = the engine's 1e-12; the chaotic subspace and the extreme directions);
  values = the same call with ``vectors=False``, as the engine makes it at every other point (exponents, error
        estimates, chaotic dimension; no eigenvector).
  PASS (each of new and values) if old / it >= 5 and the chaotic dimension is the same and every exponent agrees
  within the sum of both error estimates; it also prints the distance of the chaotic-subspace projectors and the
  overlaps of the extreme directions (new only).
Each --threads value is one pass (torch.set_num_threads); the machine may be shared, so only ratios measured in
the same pass mean something.

    CHAOSNB_DATA=../shared/data .venv/bin/python benchmarks/bench_lyapunov.py --threads 1,2
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
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chaosnb.lyapunov import EPS64, REORTH_LOG_COND, TangentMap, _ldexp  # noqa: E402

F64 = torch.float64


def old_step(y: torch.Tensor, log2_scale: int, lam: torch.Tensor, vecs: torch.Tensor, lr: float
             ) -> tuple[torch.Tensor, int]:
    """The previous implementation of TangentMap.step for a pair (plain SGD), rescale included."""
    hy = vecs @ (lam[:, None] * (vecs.T @ y))
    y = y - lr * hy
    m = y.abs().max()
    if not bool(torch.isfinite(m)):
        raise FloatingPointError("non-finite")
    e = int(torch.frexp(m)[1])
    if e:
        y = _ldexp(y, -e)
        log2_scale += e
    return y, log2_scale


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def mlp_input_subspace(seed: int):
    """The paper MLP's input subspace P on a USPS batch of 8 (d = 390 of N = 5,350), as the engine builds it."""
    from chaosnb.curvature import input_subspace
    from chaosnb.data import BatchSampler, load_dataset
    from chaosnb.models import FlatModel, build_model

    data = load_dataset("usps")
    x, _ = BatchSampler(len(data.train_x), 8, seed=seed).batch(data, 0)
    return input_subspace(FlatModel(build_model("mlp")), x)


def target3(n: int, rank: int, lr: float, repeats: int, seed: int, subspace=None) -> dict:
    """The dense-pair step against its floor; with ``subspace`` (the MLP's P, N = n) also the engine's factored
    step V = P C with the same rank, in the same repetitions."""
    from chaosnb.lyapunov import FactoredEigenpairs

    gen = torch.Generator().manual_seed(seed)
    vecs, _ = torch.linalg.qr(torch.randn(n, rank, generator=gen, dtype=F64))
    lam = 2.0 * torch.randn(rank, generator=gen, dtype=F64)
    y0 = torch.eye(n, dtype=F64) + torch.randn(n, n, generator=gen, dtype=F64) / math.sqrt(n)
    p_out, b_out = torch.empty(rank, n, dtype=F64), torch.empty(n, n, dtype=F64)
    tm = TangentMap(n, lr)
    tm._w = y0.clone()
    y_old, k_old = y0.clone(), 0
    floor, old, new, fact = [], [], [], []
    if subspace is not None:
        coords, _ = torch.linalg.qr(torch.randn(subspace.dim, rank, generator=gen, dtype=F64))
        pair = FactoredEigenpairs(lam, coords, subspace)
        tf = TangentMap(n, lr)
        tf._w = y0.clone()
    for _ in range(repeats + 1):  # the first repetition warms up and is dropped
        f = timed(lambda: torch.mm(vecs.T, y0, out=p_out)) + timed(lambda: torch.mm(vecs, p_out, out=b_out))
        start = time.perf_counter()
        y_old, k_old = old_step(y_old, k_old, lam, vecs, lr)
        o = time.perf_counter() - start
        before = tm.reorthonormalisations
        s = timed(lambda: tm.step((lam, vecs)))
        assert tm.reorthonormalisations == before, "a re-orthonormalisation fell into the timed steps"
        if subspace is not None:
            fact.append(timed(lambda: tf.step(pair)))
        floor.append(f)
        old.append(o)
        new.append(s)
    floor, old, new = floor[1:], old[1:], new[1:]
    reorth_s = timed(tm._reorthonormalise)
    per_step_cond = lr * float(lam.max() - lam.min())
    steps_per_reorth = REORTH_LOG_COND / per_step_cond
    out = {"n": n, "rank": rank, "floor_s": statistics.median(floor), "old_s": statistics.median(old),
           "new_s": statistics.median(new), "reorth_s": reorth_s, "steps_per_reorth": steps_per_reorth}
    out["new_over_floor"] = out["new_s"] / out["floor_s"]
    out["old_over_floor"] = out["old_s"] / out["floor_s"]
    out["reorth_per_step_s"] = reorth_s / steps_per_reorth
    out["pass"] = out["new_over_floor"] <= 1.3
    if fact:
        out["factored_s"] = statistics.median(fact[1:])
        out["factored_over_floor"] = out["factored_s"] / out["floor_s"]
    return out


def mlp_tangent_map(steps: int, seed: int, lr: float = 1e-3, momentum: float = 0.0, model: str = "mlp"
                    ) -> TangentMap:
    """The engine's tangent map after ``steps`` steps of the USPS MLP (or ``model``; batch 8, low-rank spectra)."""
    from chaosnb.config import RunConfig
    from chaosnb.train import Training

    config = RunConfig(dataset="usps", model=model, batch_size=8, steps=steps + 1, seed=seed, lr=lr,
                       momentum=momentum, spectrum_method="lowrank", tangent_steps=(steps + 1,))
    training = Training(config)
    for _ in range(steps):
        training.advance()
    if training.status == "diverged":
        raise RuntimeError(f"training diverged: {training.diverged_reason}")
    return training.tangent


def timed_cpu(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call: the CPU time is steadier when other processes share
    the cores (with one thread it is the work done plus what contention for caches and memory adds)."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def target4(tm: TangentMap, tol: float, graded: bool = False) -> dict:
    box = {}
    values_s, values_cpu = timed_cpu(lambda: box.update(values=tm.lyapunov(tol, vectors=False)))
    print(f"  values only ({box['values'].method}): {values_s:.1f} s (CPU {values_cpu:.1f} s)", flush=True)
    new_s, new_cpu = timed_cpu(lambda: box.update(new=tm.lyapunov(tol)))
    print(f"  new path ({box['new'].method}): {new_s:.1f} s (CPU {new_cpu:.1f} s)", flush=True)
    old_s, old_cpu = timed_cpu(lambda: box.update(old=tm.lyapunov(tol, method="full")))
    new, old, values = box["new"], box["old"], box["values"]
    vboth = values.resolved & old.resolved
    vdiff = (values.exponents - old.exponents).abs()
    values_within = bool(torch.all(vdiff[vboth] <= (values.error_estimate + old.error_estimate)[vboth]))
    both = new.resolved & old.resolved
    diff = (new.exponents - old.exponents).abs()
    bound = new.error_estimate + old.error_estimate
    within = bool(torch.all(diff[both] <= bound[both]))
    p_new, p_old = (b @ b.T for b in (new.chaotic_subspace(), old.chaotic_subspace()))
    proj = float(torch.linalg.matrix_norm(p_new - p_old, ord=2)) if new.chaotic_dim or old.chaotic_dim else 0.0
    last_old = int(old.resolved.sum()) - 1
    out = {"t": tm.t, "method": new.method, "old_s": old_s, "new_s": new_s, "speedup": old_s / new_s,
           "old_cpu_s": old_cpu, "new_cpu_s": new_cpu, "speedup_cpu": old_cpu / new_cpu,
           "chaotic_dim_new": new.chaotic_dim, "chaotic_dim_old": old.chaotic_dim,
           "certain_new": new.chaotic_dim_certain, "certain_old": old.chaotic_dim_certain,
           "unresolved_new": new.num_unresolved, "unresolved_old": old.num_unresolved,
           "max_abs_diff": float(diff[both].max()), "max_err_new": float(new.error_estimate[new.resolved].max()),
           "within_error": within, "projector_distance": proj,
           "max_exponent": new.max_exponent, "min_exponent_new": new.min_exponent,
           "min_exponent_old": old.min_exponent,
           "overlap_max_dir": abs(float(new.vectors[:, 0] @ old.vectors[:, 0])),
           "overlap_min_dir": abs(float(new.vectors[:, -1] @ old.vectors[:, last_old])),
           "reorthonormalisations": tm.reorthonormalisations, "relative_error": tm.relative_error,
           "eps": EPS64}
    out["pass"] = out["speedup"] >= 5.0 and out["chaotic_dim_new"] == out["chaotic_dim_old"] and within
    out.update({"values_s": values_s, "values_cpu_s": values_cpu, "values_speedup": old_s / values_s,
                "values_speedup_cpu": old_cpu / values_cpu, "values_method": values.method,
                "chaotic_dim_values": values.chaotic_dim, "values_within_error": values_within,
                "values_max_abs_diff": float(vdiff[vboth].max())})
    out["values_pass"] = (out["values_speedup"] >= 5.0 and values.chaotic_dim == old.chaotic_dim
                          and values_within)
    if graded:  # the path for spectra wider than the SVD resolves, timed on the same map for comparison
        graded_s, graded_cpu = timed_cpu(lambda: box.update(graded=tm.lyapunov(tol, method="graded")))
        g = box["graded"]
        gboth = g.resolved & new.resolved
        gdiff = (g.exponents - new.exponents).abs()
        out.update({"graded_s": graded_s, "graded_cpu_s": graded_cpu, "chaotic_dim_graded": g.chaotic_dim,
                    "graded_within_error": bool(torch.all(gdiff[gboth] <= (g.error_estimate
                                                                           + new.error_estimate)[gboth])),
                    "graded_max_err": float(g.error_estimate[g.resolved].max())})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts, one pass each")
    parser.add_argument("--n", type=int, default=5350, help="N for target 3 (the MLP's parameter count)")
    parser.add_argument("--rank", type=int, default=218, help="rank of the pair for target 3")
    parser.add_argument("--repeats", type=int, default=7, help="timed repetitions for target 3")
    parser.add_argument("--steps", type=int, default=40, help="MLP training steps before the target-4 spectrum")
    parser.add_argument("--tol", type=float, default=1e-12, help="tolerance (the engine's lyapunov_tol)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate of the target-4 MLP run")
    parser.add_argument("--momentum", type=float, default=0.0, help="momentum of the target-4 MLP run")
    parser.add_argument("--model", default="mlp", choices=("mlp", "cnn"), help="model of the target-4 run")
    parser.add_argument("--skip3", action="store_true", help="target 4 only")
    parser.add_argument("--skip4", action="store_true", help="target 3 only")
    parser.add_argument("--graded", action="store_true", help="target 4: also time the graded path on the same map")
    parser.add_argument("--data", default=None, help="dataset root (default $CHAOSNB_DATA or ../shared/data)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--map-cache", default=None,
                        help="torch.save file of the MLP tangent map's state_dict: loaded if present, else written")
    args = parser.parse_args(argv)
    if args.data:
        os.environ["CHAOSNB_DATA"] = str(Path(args.data).resolve())
    elif not os.environ.get("CHAOSNB_DATA") and (ROOT.parent / "shared" / "data").exists():
        os.environ["CHAOSNB_DATA"] = str(ROOT.parent / "shared" / "data")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("CHAOSNB_RESULTS", tmp)
        tm = None
        for threads in [int(x) for x in args.threads.split(",")]:
            torch.set_num_threads(threads)
            print(f"== threads {threads}, load {'/'.join(f'{v:.1f}' for v in os.getloadavg())} ==", flush=True)
            row = {"threads": threads}
            if not args.skip3:
                sub = mlp_input_subspace(args.seed) if args.n == 5350 else None
                r3 = target3(args.n, args.rank, 1e-3, args.repeats, args.seed, sub)
                row["target3"] = r3
                print(f"target 3 step (N={r3['n']}, rank {r3['rank']}): floor {r3['floor_s']:.3f} s, old "
                      f"{r3['old_s']:.3f} s ({r3['old_over_floor']:.2f}x floor), new {r3['new_s']:.3f} s "
                      f"({r3['new_over_floor']:.2f}x floor) -> {'PASS' if r3['pass'] else 'FAIL'} (<= 1.3x); "
                      f"re-orthonormalisation {r3['reorth_s']:.1f} s every ~{r3['steps_per_reorth']:.0f} steps = "
                      f"{r3['reorth_per_step_s']:.3f} s/step amortised", flush=True)
                if "factored_s" in r3:
                    print(f"  factored step (the engine's for the MLP: V = P C, d = {sub.dim}, same rank): "
                          f"{r3['factored_s']:.3f} s = {r3['factored_over_floor']:.2f}x the dense pair's floor",
                          flush=True)
            if not args.skip4:
                if tm is None and args.map_cache and Path(args.map_cache).exists():
                    state = torch.load(args.map_cache)
                    tm = TangentMap(int(state["num_params"]), float(state["lr"]), float(state["momentum"]))
                    tm.load_state_dict(state)
                    print(f"  (loaded the MLP tangent map at t={tm.t}, lr {tm.lr:g}, momentum {tm.momentum:g}, "
                          f"{tm.reorthonormalisations} re-orthonormalisations, from {args.map_cache})", flush=True)
                if tm is None:
                    start = time.perf_counter()
                    tm = mlp_tangent_map(args.steps, args.seed, args.lr, args.momentum, args.model)
                    print(f"  (built the MLP tangent map: {args.steps} steps in {time.perf_counter() - start:.0f} s)",
                          flush=True)
                    if args.map_cache:
                        torch.save(tm.state_dict(), args.map_cache)
                r4 = target4(tm, args.tol, args.graded)
                print(f"target 4 spectrum (t={r4['t']}, {r4['method']}): old (full SVD) {r4['old_s']:.1f} s, new "
                      f"{r4['new_s']:.1f} s -> {r4['speedup']:.1f}x [CPU {r4['old_cpu_s']:.1f} / "
                      f"{r4['new_cpu_s']:.1f} s = {r4['speedup_cpu']:.1f}x]; chaotic dim {r4['chaotic_dim_new']} vs "
                      f"{r4['chaotic_dim_old']} (certain {r4['certain_new']}/{r4['certain_old']}); max |diff| "
                      f"{r4['max_abs_diff']:.2e} (max err new {r4['max_err_new']:.2e}), within errors "
                      f"{r4['within_error']}; projector distance {r4['projector_distance']:.1e}; overlaps max/min "
                      f"direction {r4['overlap_max_dir']:.6f}/{r4['overlap_min_dir']:.6f}; unresolved "
                      f"{r4['unresolved_new']}/{r4['unresolved_old']} -> {'PASS' if r4['pass'] else 'FAIL'} "
                      f"(>= 5x, same dim, within errors)", flush=True)
                print(f"target 4 exponents only (t={r4['t']}, {r4['values_method']}, vectors=False): old "
                      f"{r4['old_s']:.1f} s, values {r4['values_s']:.1f} s -> {r4['values_speedup']:.1f}x [CPU "
                      f"{r4['values_speedup_cpu']:.1f}x]; chaotic dim {r4['chaotic_dim_values']} vs "
                      f"{r4['chaotic_dim_old']}; max |diff| {r4['values_max_abs_diff']:.2e}, within errors "
                      f"{r4['values_within_error']} -> {'PASS' if r4['values_pass'] else 'FAIL'} "
                      f"(>= 5x, same dim, within errors)", flush=True)
                if args.graded:
                    print(f"graded path on the same map: {r4['graded_s']:.1f} s (CPU {r4['graded_cpu_s']:.1f} s), "
                          f"chaotic dim {r4['chaotic_dim_graded']}, within errors of the new path "
                          f"{r4['graded_within_error']} (max error estimate {r4['graded_max_err']:.1e})", flush=True)
                row["target4"] = r4
            results.append(row)
        print(f"load at the end {'/'.join(f'{v:.1f}' for v in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
