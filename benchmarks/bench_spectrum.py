"""Per-step cost and accuracy of the exact mini-batch Hessian spectrum: method="dense" against "lowrank".

For each case (model, batch size) on USPS, theta follows plain SGD on the seeded sampler's batches and the
spectrum of the CURRENT mini-batch loss is computed at a few steps (0, stride, 2*stride, ...) by

* dense   : ``torch.func.hessian`` + ``torch.linalg.eigh`` in float32, as the paper (the same calls as
            ``hessian_spectrum(method="dense")``, timed in two parts: Hessian and eigh);
* lowrank : ``minibatch_spectrum(method="lowrank")`` (certified range from batched HVPs, float64 products);
* ref64   : the dense method on ``theta.double()`` (float64), the reference both are compared against.

dense and lowrank run back to back on the same batch, their order alternating between repetitions, so the
speed-up is a same-run, same-load ratio. Spectra are compared in full: sorted, the low-rank one padded with
its implicit (exact) zeros. Counts use each spectrum's own tolerance (rtol * max|lambda|); the "naive"
float32 count uses no tolerance (lambda < 0 is negative), which shows the +-1e-7 noise of float32 eigh.

    CHAOSNB_DATA=../shared/data .venv/bin/python benchmarks/bench_spectrum.py   # ~2 min on 2 idle cores
    .venv/bin/python benchmarks/bench_spectrum.py --cases mlp:8 --repeats 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.func import grad

ROOT = Path(__file__).resolve().parents[1]
SPEEDUP_TARGET = 30.0  # the target: lowrank >= 30x faster than dense for the MLP at batch 8
EIG_RTOL_TARGET = 1e-5  # ... with eigenvalues equal to 1e-5 relative to max|lambda|


def set_data_root(path: str | None) -> None:
    """--data, else $CHAOSNB_DATA, else ../shared/data beside the repository (as the Makefile does)."""
    if path:
        os.environ["CHAOSNB_DATA"] = str(Path(path).resolve())
    elif not os.environ.get("CHAOSNB_DATA") and (ROOT.parent / "shared" / "data").exists():
        os.environ["CHAOSNB_DATA"] = str(ROOT.parent / "shared" / "data")


def load() -> str:
    """The 1/5/15-minute load averages (other processes share the CPUs; timings are only comparable within a run)."""
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "?"


def parse_cases(text: str) -> list[tuple[str, int]]:
    cases = []
    for item in text.split(","):
        model, _, batch = item.strip().partition(":")
        if model not in ("mlp", "cnn") or not batch.isdigit():
            raise argparse.ArgumentTypeError(f"bad case {item!r}; expected e.g. mlp:8,mlp:16,cnn:8")
        cases.append((model, int(batch)))
    return cases


def full_spectrum(spec) -> torch.Tensor:
    """All N eigenvalues (float64, ascending), the implicit zeros of a low-rank spectrum included."""
    lam = spec.eigenvalues.detach().double()
    if spec.implicit_zeros:
        lam = torch.cat([lam, torch.zeros(spec.implicit_zeros, dtype=torch.float64)])
    return torch.sort(lam).values


def compare(a: torch.Tensor, b: torch.Tensor, scale: float) -> tuple[float, float]:
    """(max |a - b|, that / scale) of two full sorted spectra."""
    diff = float((a - b).abs().max())
    return diff, diff / scale if scale > 0 else math.nan


def counts(spec) -> tuple[int, int, int]:
    return spec.n_pos, spec.n_neg, spec.n_zero


def naive_counts(spec) -> tuple[int, int, int]:
    """(lambda > 0, lambda < 0, lambda == 0) without any tolerance, implicit zeros counted as zero."""
    lam = spec.eigenvalues
    return int((lam > 0).sum()), int((lam < 0).sum()), int((lam == 0).sum()) + spec.implicit_zeros


def timed_dense(flat, theta, x, y, rtol: float):
    """The dense method (exactly hessian_spectrum(method='dense')), timed as Hessian + eigh."""
    from chaosnb.curvature import dense_hessian, spectrum_from_matrix

    loss = flat.loss_fn(x.to(theta.dtype), y)
    t0 = time.perf_counter()
    h = dense_hessian(loss, theta)
    t1 = time.perf_counter()
    spec = spectrum_from_matrix(h, rtol)
    t2 = time.perf_counter()
    del h
    return spec, t2 - t0, t1 - t0, t2 - t1


def timed_lowrank(flat, theta, x, y, rtol: float, kwargs: dict):
    from chaosnb.curvature import minibatch_spectrum

    t0 = time.perf_counter()
    spec = minibatch_spectrum(flat, theta, x, y, method="lowrank", rtol=rtol, **kwargs)
    return spec, time.perf_counter() - t0


def warm_up(flat, theta, x, y, kwargs: dict) -> None:
    """First calls pay for thread pools / LAPACK / functorch set-up; none of that is timed."""
    from chaosnb.curvature import minibatch_spectrum

    for dtype in (torch.float32, torch.float64):
        a = torch.randn(64, 64, dtype=dtype)
        torch.linalg.eigh(a + a.T)
    minibatch_spectrum(flat, theta, x, y, method="lowrank", **kwargs)


def sgd_to(flat, theta: torch.Tensor, ds, sampler, start: int, stop: int, lr: float) -> torch.Tensor:
    """Plain SGD (torch.optim.SGD without momentum) from step ``start`` to ``stop`` on the sampler's batches."""
    for step in range(start, stop):
        x, y = sampler.batch(ds, step)
        g = grad(lambda th, x=x, y=y: flat.loss(th, x, y))(theta)
        theta = (theta - lr * g).detach()
    return theta


def run_case(model: str, batch: int, args, ds) -> dict:
    from chaosnb.data import sampler_for
    from chaosnb.models import make_flat_model

    flat, theta = make_flat_model(model, seed=args.seed, dtype=torch.float32)
    sampler = sampler_for(ds, batch, args.seed)
    kwargs = {} if args.block is None else {"block": args.block}
    x0, y0 = sampler.batch(ds, 0)
    warm_up(flat, theta, x0, y0, kwargs)
    rows, position = [], 0
    print(f"\n== {model.upper()} ({flat.num_params} parameters), USPS, batch {batch}, steps "
          f"{[r * args.stride for r in range(args.repeats)]} ==", flush=True)
    for rep in range(args.repeats):
        step = rep * args.stride
        theta = sgd_to(flat, theta, ds, sampler, position, step, args.lr)
        position = step
        x, y = sampler.batch(ds, step)
        res: dict = {"step": step}
        order = ("dense", "lowrank") if rep % 2 == 0 else ("lowrank", "dense")
        for method in order:
            if method == "dense":
                dense, res["dense_s"], res["dense_hessian_s"], res["dense_eigh_s"] = timed_dense(
                    flat, theta, x, y, args.rtol)
            else:
                low, res["lowrank_s"] = timed_lowrank(flat, theta, x, y, args.rtol, kwargs)
        res["speedup"] = res["dense_s"] / res["lowrank_s"]
        res["fallback"] = bool(low.info.get("fallback", False))
        res["lowrank_method"] = low.method
        res["range_dim"] = low.info.get("range_dim")
        res["probes"] = low.info.get("probes")
        res["rank_lowrank"], res["rank_dense"] = low.rank, dense.rank
        lam_d, lam_l = full_spectrum(dense), full_spectrum(low)
        scale = float(lam_l.abs().max())
        res["max_abs_eig"] = scale
        res["diff_abs"], res["diff_rel"] = compare(lam_l, lam_d, scale)
        res["counts_dense"], res["counts_lowrank"] = counts(dense), counts(low)
        res["counts_dense_naive"] = naive_counts(dense)
        res["tol_dense"], res["tol_lowrank"] = dense.tol, low.tol
        del dense, low
        if rep < args.reference_repeats:
            ref, res["ref64_s"], _, _ = timed_dense(flat, theta.double(), x, y, args.rtol)
            lam_r = full_spectrum(ref)
            scale_r = float(lam_r.abs().max())
            res["dense_vs_ref_abs"], res["dense_vs_ref_rel"] = compare(lam_d, lam_r, scale_r)
            res["lowrank_vs_ref_abs"], res["lowrank_vs_ref_rel"] = compare(lam_l, lam_r, scale_r)
            res["counts_ref"] = counts(ref)
            res["rank_ref"] = ref.rank
            del ref
        rows.append(res)
        print_row(res)
    speedups = [r["speedup"] for r in rows]
    summary = {
        "model": model, "batch": batch, "num_params": flat.num_params, "rows": rows,
        "dense_s_median": statistics.median(r["dense_s"] for r in rows),
        "lowrank_s_median": statistics.median(r["lowrank_s"] for r in rows),
        "speedup_median": statistics.median(speedups), "speedup_min": min(speedups),
        "diff_rel_max": max(r["diff_rel"] for r in rows), "diff_abs_max": max(r["diff_abs"] for r in rows),
        "any_fallback": any(r["fallback"] for r in rows),
    }
    with_ref = [r for r in rows if "dense_vs_ref_rel" in r]
    if with_ref:
        summary["dense_vs_ref_rel_max"] = max(r["dense_vs_ref_rel"] for r in with_ref)
        summary["lowrank_vs_ref_rel_max"] = max(r["lowrank_vs_ref_rel"] for r in with_ref)
    return summary


def fmt_counts(c) -> str:
    return "/".join(str(v) for v in c)


def print_row(r: dict) -> None:
    fb = "yes" if r["fallback"] else "no"
    print(f"  step {r['step']:>5}: dense {r['dense_s']:7.2f} s (hessian {r['dense_hessian_s']:.2f} + eigh "
          f"{r['dense_eigh_s']:.2f})  lowrank {r['lowrank_s']:6.3f} s  speed-up {r['speedup']:6.1f}x  "
          f"rank {r['rank_lowrank']} (dense: {r['rank_dense']})  range dim {r['range_dim'] or '-'}  "
          f"probes {r['probes']}  fallback {fb}", flush=True)
    print(f"              max|lambda| {r['max_abs_eig']:.4g}  |lowrank - dense| max {r['diff_abs']:.2e} "
          f"(rel {r['diff_rel']:.2e})", flush=True)
    line = (f"              counts pos/neg/zero: dense {fmt_counts(r['counts_dense'])}  lowrank "
            f"{fmt_counts(r['counts_lowrank'])}")
    if "counts_ref" in r:
        line += f"  ref64 {fmt_counts(r['counts_ref'])}"
    line += f"  dense naive (no tol) {fmt_counts(r['counts_dense_naive'])}"
    print(line, flush=True)
    if "ref64_s" in r:
        print(f"              vs float64 dense reference ({r['ref64_s']:.2f} s): dense float32 max err "
              f"{r['dense_vs_ref_abs']:.2e} (rel {r['dense_vs_ref_rel']:.2e}), lowrank max err "
              f"{r['lowrank_vs_ref_abs']:.2e} (rel {r['lowrank_vs_ref_rel']:.2e})", flush=True)


def print_summary(results: list[dict]) -> list[str]:
    print("\n== summary (medians over steps; ratios are per step, dense/lowrank on the same batch) ==")
    head = (f"{'case':<12}{'N':>6}{'dense s':>10}{'lowrank s':>11}{'speed-up':>10}{'min':>7}{'rank':>10}"
            f"{'range':>10}{'fallback':>9}{'|dl| rel':>10}{'dense err':>11}{'lowrank err':>12}")
    print(head)
    print("-" * len(head))
    for s in results:
        ranks = "/".join(str(v) for v in sorted({r["rank_lowrank"] for r in s["rows"]}))
        ranges = "/".join(str(v) for v in sorted({r["range_dim"] for r in s["rows"] if r["range_dim"]})) or "-"
        print(f"{s['model'] + ' b=' + str(s['batch']):<12}{s['num_params']:>6}{s['dense_s_median']:>10.2f}"
              f"{s['lowrank_s_median']:>11.3f}{s['speedup_median']:>9.1f}x{s['speedup_min']:>6.1f}x"
              f"{ranks:>10}{ranges:>10}{'yes' if s['any_fallback'] else 'no':>9}{s['diff_rel_max']:>10.1e}"
              f"{s.get('dense_vs_ref_rel_max', math.nan):>11.1e}{s.get('lowrank_vs_ref_rel_max', math.nan):>12.1e}")
    print("  |dl| rel: max|lambda_lowrank - lambda_dense| / max|lambda| over the full sorted spectra;"
          "\n  dense err / lowrank err: the same against the float64 dense reference (steps where it was run).")
    verdicts = []
    target = next((s for s in results if s["model"] == "mlp" and s["batch"] == 8), None)
    if target is None:
        verdicts.append("SKIP  targets (the mlp:8 case was not run)")
    else:
        ok = target["speedup_median"] >= SPEEDUP_TARGET
        verdicts.append(f"{'PASS' if ok else 'FAIL'}  MLP batch 8: lowrank {target['speedup_median']:.1f}x faster "
                        f"than dense (median over {len(target['rows'])} steps; target >= {SPEEDUP_TARGET:g}x)")
        ok = target["diff_rel_max"] <= EIG_RTOL_TARGET
        verdicts.append(f"{'PASS' if ok else 'FAIL'}  MLP batch 8: eigenvalues agree to {target['diff_rel_max']:.1e} "
                        f"relative to max|lambda| (target <= {EIG_RTOL_TARGET:g})")
    print()
    for line in verdicts:
        print(line)
    return verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=parse_cases, default=parse_cases("mlp:8,mlp:16,cnn:8"),
                        help="model:batch list (default mlp:8,mlp:16,cnn:8)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="measured steps per case (default 2; a dense MLP call takes ~15-20 s on 2 idle cores)")
    parser.add_argument("--reference-repeats", type=int, default=1,
                        help="of those, how many also get the float64 dense reference (default 1; ~25 s each "
                             "for the MLP)")
    parser.add_argument("--stride", type=int, default=100, help="SGD steps between measured steps (default 100)")
    parser.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate for the trajectory")
    parser.add_argument("--seed", type=int, default=42, help="model and sampler seed (RunConfig's default)")
    parser.add_argument("--rtol", type=float, default=1e-5, help="zero tolerance relative to max|lambda|")
    parser.add_argument("--block", type=int, default=None, help="lowrank probe block size (package default)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--data", default=None, help="data root (default $CHAOSNB_DATA or ../shared/data)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.stride < 1:
        parser.error("--repeats and --stride must be >= 1")
    set_data_root(args.data)
    if args.threads:
        torch.set_num_threads(args.threads)

    from chaosnb.data import load_dataset

    ds = load_dataset("usps")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}, python {platform.python_version()}; load average {load()}")
    start = time.perf_counter()
    results = [run_case(model, batch, args, ds) for model, batch in args.cases]
    verdicts = print_summary(results)
    total = time.perf_counter() - start
    print(f"\ntotal {total:.0f} s; load average at the end {load()}")
    if args.json:
        payload = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                   "args": {k: v for k, v in vars(args).items() if k != "json"}, "cases": results,
                   "verdicts": verdicts, "total_s": total}
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
