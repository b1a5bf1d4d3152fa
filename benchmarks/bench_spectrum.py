"""Per-step cost and accuracy of the exact mini-batch Hessian spectrum: dense, old low-rank, new low-rank, floor.

For each case (model, batch size) on USPS, theta follows plain SGD on the seeded sampler's batches and the
spectrum of the CURRENT mini-batch loss is computed at a few steps (0, stride, 2*stride, ...) by

* dense   : ``torch.func.hessian`` + ``torch.linalg.eigh`` in float32, as the paper (the same calls as
            ``hessian_spectrum(method="dense")``, timed in two parts: Hessian and eigh);
* old     : the previous low-rank algorithm, ``minibatch_spectrum(method="lowrank", single_pass=False,
            max_rank_fraction=0.4)`` (its former default): probe blocks of 64 until a whole fresh block adds
            nothing, then H Q again; dense float64 fallback above 0.4 N;
* new     : ``minibatch_spectrum(method="lowrank")`` as the engine calls it: for the MLP the exact P^T H P in its
            input subspace, in closed form (``chaosnb.one_hidden_layer``, no Hessian-vector product); for the CNN
            the full float64 Hessian in closed form (``chaosnb.multilinear``, no product), the last convolution
            deflated to the range of its rows (a seeded sketch, its QR, a certificate) and a float64 eigh of the
            ~700 x 700 rest (``closed_form_spectrum``); its Hessian timed apart as "closed-form hessian" in an
            extra call (the single-pass sketch before 1 Dec 2026);
* floor   : what no exact low-rank method built on Hessian-vector products can avoid: r float64 products (r = the
            new method's range dimension, in the same vmapped chunks) plus ``symmetric_eigh`` of an r x r matrix
            (the MLP's closed form takes no product, so it runs below this floor);
* ref64   : the dense method on ``theta.double()`` (float64), the reference all are compared against.

The timed methods run back to back on the same batch, their order rotating between repetitions, so every
ratio is a same-run, same-load ratio. Wall-clock and process CPU seconds are both recorded; the CPU time is
steadier when other processes share the cores. Spectra are compared in full: sorted, the low-rank ones
padded with their implicit (exact) zeros, errors relative to max|lambda|. Counts use each spectrum's own
tolerance (rtol * max|lambda|); the "naive" float32 count uses none and shows the +-1e-7 noise of float32 eigh.

Targets (issue 10): (1) MLP batch 8: new >= 3x faster than old, eigenvalues equal to ref64 within 1e-12
relative, same rank as ref64 and old; (2) CNN batch 8: new >= 3x faster than dense and never slower, equal to
ref64 within 1e-12 relative.

    CHAOSNB_DATA=../shared/data .venv/bin/python benchmarks/bench_spectrum.py --threads 1
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
SPEEDUP_TARGET = 3.0  # issue 10: the new low-rank path >= 3x faster than the old one (MLP) / than dense (CNN)
EIG_RTOL_TARGET = 1e-12  # ... with eigenvalues equal to the float64 dense ones within 1e-12 relative
METHODS = ("dense", "old", "new", "floor")


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


class Timer:
    """Wall-clock and process CPU seconds of a block."""

    def __enter__(self):
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w0, time.process_time() - self.c0


def timed_dense(flat, theta, x, y, rtol: float):
    """The dense method (exactly hessian_spectrum(method='dense')), timed as Hessian + eigh."""
    from chaosnb.curvature import dense_hessian, spectrum_from_matrix

    loss = flat.loss_fn(x.to(theta.dtype), y)
    with Timer() as total:
        with Timer() as part:
            h = dense_hessian(loss, theta)
        spec = spectrum_from_matrix(h, rtol)
    del h
    return spec, total, part.wall


def timed_lowrank(flat, theta, x, y, rtol: float, kwargs: dict):
    from chaosnb.curvature import minibatch_spectrum

    with Timer() as total:
        spec = minibatch_spectrum(flat, theta, x, y, method="lowrank", rtol=rtol, **kwargs)
    return spec, total


def timed_floor(flat, theta, x, y, r: int):
    """r float64 Hessian-vector products (vmapped, in the package's chunks) + symmetric_eigh of an r x r matrix."""
    from chaosnb.curvature import hvp_fn, symmetric_eigh

    theta64 = theta.detach().double()
    apply_h = hvp_fn(flat.loss_fn(x.double(), y), theta64)
    probes = torch.randn(theta64.numel(), r, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    small = torch.randn(r, r, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    small = small + small.T
    with Timer() as total:
        with Timer() as part:
            apply_h(probes)
        symmetric_eigh(small)
    return total, part.wall


def timed_closed_form(flat, theta, x, y) -> float:
    """Seconds of the CNN's float64 Hessian in closed form alone (the rest of the new path is its float64 eigh);
    an extra call, not part of the timed new method."""
    from chaosnb.multilinear import closed_form_hessian

    theta64 = theta.detach().double()
    with Timer() as t:
        closed_form_hessian(flat, theta64, x.double(), y)
    return t.wall


OLD_KWARGS = {"single_pass": False, "max_rank_fraction": 0.4}


def warm_up(flat, theta, x, y) -> None:
    """First calls pay for thread pools / LAPACK / functorch set-up; none of that is timed."""
    from chaosnb.curvature import minibatch_spectrum

    for dtype in (torch.float32, torch.float64):
        a = torch.randn(64, 64, dtype=dtype)
        torch.linalg.eigh(a + a.T)
    minibatch_spectrum(flat, theta, x, y, method="lowrank")
    minibatch_spectrum(flat, theta, x, y, method="lowrank", **OLD_KWARGS)


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
    x0, y0 = sampler.batch(ds, 0)
    warm_up(flat, theta, x0, y0)
    rows, position = [], 0
    print(f"\n== {model.upper()} ({flat.num_params} parameters), USPS, batch {batch}, steps "
          f"{[r * args.stride for r in range(args.repeats)]} ==", flush=True)
    for rep in range(args.repeats):
        step = rep * args.stride
        theta = sgd_to(flat, theta, ds, sampler, position, step, args.lr)
        position = step
        x, y = sampler.batch(ds, step)
        res: dict = {"step": step}
        specs: dict = {}
        order = METHODS[rep % len(METHODS):] + METHODS[: rep % len(METHODS)]
        order = tuple(m for m in order if m != "floor") + ("floor",)  # the floor needs the new method's r
        for method in order:
            if method == "dense":
                specs["dense"], t, res["dense_hessian_s"] = timed_dense(flat, theta, x, y, args.rtol)
            elif method == "old":
                specs["old"], t = timed_lowrank(flat, theta, x, y, args.rtol, OLD_KWARGS)
            elif method == "new":
                specs["new"], t = timed_lowrank(flat, theta, x, y, args.rtol, {})
            else:
                res["floor_r"] = int(specs["new"].eigenvalues.numel())
                t, res["floor_hvp_s"] = timed_floor(flat, theta, x, y, res["floor_r"])
            res[f"{method}_s"], res[f"{method}_cpu"] = t.wall, t.cpu
        if specs["new"].info.get("structure") == "piecewise-linear, closed form":  # where the new path's time goes
            res["new_hessian_s"] = timed_closed_form(flat, theta, x, y)
        for method in ("dense", "old", "floor"):
            res[f"new_vs_{method}"] = res[f"{method}_s"] / res["new_s"]
            res[f"new_vs_{method}_cpu"] = res[f"{method}_cpu"] / res["new_cpu"]
        for method in ("old", "new"):
            spec = specs[method]
            res[f"{method}_method"] = spec.method
            res[f"{method}_fallback"] = bool(spec.info.get("fallback", False))
            res[f"{method}_probes"] = spec.info.get("probes")
            res[f"{method}_range_dim"] = spec.info.get("range_dim")
        res["new_certificate"] = specs["new"].info.get("certificate")
        res["new_subspace_dim"] = specs["new"].info.get("subspace_dim")
        lam = {m: full_spectrum(s) for m, s in specs.items()}
        scale = float(lam["new"].abs().max())
        res["max_abs_eig"] = scale
        res["new_vs_dense_rel"] = compare(lam["new"], lam["dense"], scale)[1]
        res["new_vs_old_rel"] = compare(lam["new"], lam["old"], scale)[1]
        res["rank"] = {m: s.rank for m, s in specs.items()}
        res["counts"] = {m: counts(s) for m, s in specs.items()}
        res["counts_dense_naive"] = naive_counts(specs["dense"])
        del specs
        if rep < args.reference_repeats:
            ref, t, _ = timed_dense(flat, theta.double(), x, y, args.rtol)
            res["ref64_s"] = t.wall
            lam_r = full_spectrum(ref)
            scale_r = float(lam_r.abs().max())
            for m in ("dense", "old", "new"):
                res[f"{m}_vs_ref_rel"] = compare(lam[m], lam_r, scale_r)[1]
            res["rank"]["ref64"] = ref.rank
            res["counts"]["ref64"] = counts(ref)
            del ref
        rows.append(res)
        print_row(res)
    summary = {"model": model, "batch": batch, "num_params": flat.num_params, "rows": rows}
    for key in ("dense_s", "old_s", "new_s", "floor_s", "new_vs_dense", "new_vs_old", "new_vs_floor",
                "new_vs_dense_cpu", "new_vs_old_cpu", "new_vs_floor_cpu"):
        summary[key] = statistics.median(r[key] for r in rows)
    for key in ("new_vs_dense", "new_vs_old"):
        summary[key + "_min"] = min(r[key] for r in rows)
    with_ref = [r for r in rows if "new_vs_ref_rel" in r]
    for m in ("dense", "old", "new"):
        summary[f"{m}_vs_ref_rel_max"] = max((r[f"{m}_vs_ref_rel"] for r in with_ref), default=math.nan)
    summary["same_rank"] = all(len(set(r["rank"].values())) == 1 for r in with_ref) if with_ref else None
    summary["new_fallback"] = any(r["new_fallback"] for r in rows)
    return summary


def fmt_float(v) -> str:
    return "-" if v is None else f"{v:.1e}"


def fmt_counts(c) -> str:
    return "/".join(str(v) for v in c)


def print_row(r: dict) -> None:
    print(f"  step {r['step']:>5}: dense {r['dense_s']:7.3f} s (hessian {r['dense_hessian_s']:.3f})  old "
          f"{r['old_s']:6.3f} s  new {r['new_s']:6.3f} s"
          + (f" (closed-form hessian {r['new_hessian_s']:.3f})" if "new_hessian_s" in r else "")
          + f"  floor {r['floor_s']:6.3f} s (r = {r['floor_r']}: "
          f"HVPs {r['floor_hvp_s']:.3f} + eigh)", flush=True)
    print(f"              new is {r['new_vs_old']:.2f}x faster than old ({r['new_vs_old_cpu']:.2f}x in CPU time), "
          f"{r['new_vs_dense']:.2f}x than dense ({r['new_vs_dense_cpu']:.2f}x), {1 / r['new_vs_floor']:.2f}x the "
          f"floor's time", flush=True)
    print(f"              probes old {r['old_probes']} ({r['old_method']}{', fallback' if r['old_fallback'] else ''}"
          f") new {r['new_probes']} ({r['new_method']}{', fallback' if r['new_fallback'] else ''}); range dim old "
          f"{r['old_range_dim'] or '-'} new {r['new_range_dim'] or '-'}; subspace dim {r['new_subspace_dim'] or '-'}; "
          f"certificate {fmt_float(r['new_certificate'])}", flush=True)
    print(f"              max|lambda| {r['max_abs_eig']:.4g}  |new - dense| rel {r['new_vs_dense_rel']:.1e}  "
          f"|new - old| rel {r['new_vs_old_rel']:.1e}  ranks {r['rank']}", flush=True)
    print("              counts pos/neg/zero: " + "  ".join(f"{m} {fmt_counts(c)}" for m, c in r["counts"].items())
          + f"  dense naive (no tol) {fmt_counts(r['counts_dense_naive'])}", flush=True)
    if "ref64_s" in r:
        print(f"              vs float64 dense reference ({r['ref64_s']:.2f} s), relative: dense float32 "
              f"{r['dense_vs_ref_rel']:.1e}, old {r['old_vs_ref_rel']:.1e}, new {r['new_vs_ref_rel']:.1e}", flush=True)


def print_summary(results: list[dict]) -> list[str]:
    print(f"\n== summary ({torch.get_num_threads()} threads; medians over steps; ratios per step, same batch, "
          "wall clock [CPU time]) ==")
    head = (f"{'case':<10}{'N':>6}{'dense s':>9}{'old s':>8}{'new s':>8}{'floor s':>9}{'new/old':>15}"
            f"{'new/dense':>15}{'new/floor':>11}{'rank':>6}{'dense err':>11}{'old err':>9}{'new err':>9}")
    print(head)
    print("-" * len(head))
    for s in results:
        rank = "/".join(str(v) for v in sorted({r["rank"]["new"] for r in s["rows"]}))
        print(f"{s['model'] + ' b=' + str(s['batch']):<10}{s['num_params']:>6}{s['dense_s']:>9.3f}{s['old_s']:>8.3f}"
              f"{s['new_s']:>8.3f}{s['floor_s']:>9.3f}{s['new_vs_old']:>7.2f}x [{s['new_vs_old_cpu']:.2f}x]"
              f"{s['new_vs_dense']:>7.2f}x [{s['new_vs_dense_cpu']:.2f}x]{1 / s['new_vs_floor']:>10.2f}x{rank:>6}"
              f"{s['dense_vs_ref_rel_max']:>11.1e}{s['old_vs_ref_rel_max']:>9.1e}{s['new_vs_ref_rel_max']:>9.1e}")
    print("  new/old, new/dense: how many times faster the new low-rank path is; new/floor: its time over the floor's"
          "\n  (r float64 HVPs + eigh of r x r); errors: max|lambda - lambda_ref64| / max|lambda| over full spectra.")
    verdicts = []
    mlp = next((s for s in results if s["model"] == "mlp" and s["batch"] == 8), None)
    cnn = next((s for s in results if s["model"] == "cnn" and s["batch"] == 8), None)
    if mlp is None:
        verdicts.append("SKIP  target 1 (the mlp:8 case was not run)")
    else:
        ok = mlp["new_vs_old"] >= SPEEDUP_TARGET
        verdicts.append(f"{'PASS' if ok else 'FAIL'}  target 1, MLP batch 8: new {mlp['new_vs_old']:.2f}x faster than "
                        f"old (min {mlp['new_vs_old_min']:.2f}x, CPU time {mlp['new_vs_old_cpu']:.2f}x; target >= "
                        f"{SPEEDUP_TARGET:g}x); {1 / mlp['new_vs_floor']:.2f}x the floor's time")
        ok = mlp["new_vs_ref_rel_max"] <= EIG_RTOL_TARGET and bool(mlp["same_rank"])
        verdicts.append(("SKIP" if mlp["same_rank"] is None else "PASS" if ok else "FAIL")
                        + "  target 1, MLP batch 8: eigenvalues equal to float64 dense within "
                        f"{mlp['new_vs_ref_rel_max']:.1e} relative (target <= {EIG_RTOL_TARGET:g}), same rank as "
                        f"ref64 and old: {mlp['same_rank']}")
    if cnn is None:
        verdicts.append("SKIP  target 2 (the cnn:8 case was not run)")
    else:
        ok = cnn["new_vs_dense"] >= SPEEDUP_TARGET
        verdicts.append(f"{'PASS' if ok else 'FAIL'}  target 2, CNN batch 8: new {cnn['new_vs_dense']:.2f}x faster "
                        f"than dense (CPU time {cnn['new_vs_dense_cpu']:.2f}x; target >= {SPEEDUP_TARGET:g}x)")
        ok = cnn["new_vs_dense_min"] >= 1.0
        verdicts.append(f"{'PASS' if ok else 'FAIL'}  target 2, CNN batch 8: never slower than dense (slowest step "
                        f"{cnn['new_vs_dense_min']:.2f}x)")
        ok = cnn["new_vs_ref_rel_max"] <= EIG_RTOL_TARGET and not cnn["new_fallback"]
        verdicts.append(("SKIP" if cnn["same_rank"] is None else "PASS" if ok else "FAIL")
                        + "  target 2, CNN batch 8: exact in float64 without falling back: "
                        f"{cnn['new_vs_ref_rel_max']:.1e} relative to float64 dense (target <= {EIG_RTOL_TARGET:g})")
    print()
    for line in verdicts:
        print(line)
    return verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=parse_cases, default=parse_cases("mlp:8,cnn:8"),
                        help="model:batch list (default mlp:8,cnn:8)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="measured steps per case (default 2; a dense MLP call takes ~15-20 s on 2 idle cores)")
    parser.add_argument("--reference-repeats", type=int, default=1,
                        help="of those, how many also get the float64 dense reference (default 1; ~25 s each "
                             "for the MLP)")
    parser.add_argument("--stride", type=int, default=100, help="SGD steps between measured steps (default 100)")
    parser.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate for the trajectory")
    parser.add_argument("--seed", type=int, default=42, help="model and sampler seed (RunConfig's default)")
    parser.add_argument("--rtol", type=float, default=1e-5, help="zero tolerance relative to max|lambda|")
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
