"""GPU check (issue 12 item 4): the CUDA path against the CPU, and the per-step time of a paper-profile MLP run.

ONE script for a GPU node; at most ~15 minutes of device time with the defaults (``--budget`` caps the timing
part). Nothing is written to the results store: runs are driven through :class:`chaosnb.train.Training` directly.

Part 1, equality to rounding. Each configuration below runs on the CPU (one torch thread) and on ``--device``
with the same seed, so the same batches (the sampler's RNG is on the CPU) and the same probes. Kernels round
differently, and SGD is chaotic, so differences grow with the step count; the horizons are short and the
tolerances are stated per quantity (relative = |a - b| / max(|b|, 1e-30)):

  =============================  ==========================  =========================
  quantity                        float32 model (tolerance)   float64 model (tolerance)
  =============================  ==========================  =========================
  train loss at step 0            1e-5 rel                    1e-12 rel
  train loss, every step          1e-3 rel                    1e-9 rel
  final theta (max |a-b| / |b|)   1e-3                        1e-9
  eig_max, eig_min per step       1e-3 rel                    1e-8 rel
  ftle_max, ftle_min              1e-3 abs                    1e-8 abs
  chaotic_dim, n_pos, n_neg       equal (reported if not)     equal
  =============================  ==========================  =========================

Part 2, timing on ``--device``: the paper profile's MLP/USPS reference run (batch 8, lr 1e-3, spectrum and tangent
map at every step, float64 tangent map of 5,350^2): the median per-step wall time of ``Training.advance`` over
``--steps`` steps after 3 warm-up steps (spectrum + tangent-map step + optimiser), the spectrum alone, and one
finite-time spectrum (``TangentMap.lyapunov`` at step ``--steps``). The same is timed on the CPU for
``--cpu-steps`` steps (one thread) so the ratio comes from one machine. It prints a Markdown table to paste into
``benchmarks/README.md``.

    CHAOSNB_DATA=/path/to/data python benchmarks/gpu_check.py            # on the GPU node
    CHAOSNB_DATA=/path/to/data python benchmarks/gpu_check.py --device cpu --short --steps 2 --cpu-steps 1
Exit code 0 when every comparison is within tolerance, 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chaosnb.config import RunConfig, check_device_available  # noqa: E402
from chaosnb.experiments import load_profile, reference_runs  # noqa: E402
from chaosnb.runs import device_info, device_settings  # noqa: E402
from chaosnb.train import Training  # noqa: E402

TOLERANCES = {  # dtype -> (loss at step 0, loss every step, final theta, eigenvalues, finite-time exponents)
    "float32": (1e-5, 1e-3, 1e-3, 1e-3, 1e-3),
    "float64": (1e-12, 1e-9, 1e-9, 1e-8, 1e-8),
}
EQUALITY_CONFIGS = {
    "MLP sgd float32, spectrum + tangent map": RunConfig(steps=30, spectrum_every=1, tangent_steps=(10, 30)),
    "MLP sgd float64, spectrum + tangent map": RunConfig(steps=30, dtype="float64", spectrum_every=1,
                                                         tangent_steps=(10, 30)),
    "MLP cgd[chaotic] float32, lr 0.05": RunConfig(optimizer="cgd", lr=0.05, steps=30, spectrum_every=1),
    "CNN sgd float32, dense spectrum": RunConfig(model="cnn", steps=10, lr=0.03, spectrum_every=1,
                                                 spectrum_method="dense", tangent_steps=(10,)),
}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _train(config: RunConfig):
    with device_settings(config.device):
        training = Training(config)
        while not training.finished:
            training.advance()
        return training.result()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf
    finite = np.isfinite(b)
    if not np.array_equal(finite, np.isfinite(a)):
        return math.inf
    if not finite.any():
        return 0.0
    return float(np.max(np.abs(a[finite] - b[finite]) / np.maximum(np.abs(b[finite]), 1e-30)))


def compare(name: str, config: RunConfig, device: str) -> list[tuple[str, str, float, float, bool]]:
    """Rows (config, quantity, measured, tolerance, ok) of one configuration on the CPU vs ``device``."""
    cpu = _train(dataclasses.replace(config, device="cpu"))
    dev = _train(dataclasses.replace(config, device=device))
    t0, t_loss, t_theta, t_eig, t_ftle = TOLERANCES[config.dtype]
    rows = []

    def row(quantity: str, value: float, tol: float) -> None:
        rows.append((name, quantity, value, tol, bool(value <= tol)))

    loss_cpu, loss_dev = cpu.metrics["train_loss"], dev.metrics["train_loss"]
    row("train loss, step 0 (rel)", _rel(loss_dev[:1], loss_cpu[:1]), t0)
    row("train loss, every step (rel)", _rel(loss_dev, loss_cpu), t_loss)
    theta_cpu, theta_dev = cpu.arrays["final_theta"], dev.arrays["final_theta"]
    row("final theta (max|d| / max|theta|)", float(np.abs(theta_dev - theta_cpu).max() / np.abs(theta_cpu).max()),
        t_theta)
    for key in ("eig_max", "eig_min"):
        if key in cpu.metrics:
            row(f"{key} (rel)", _rel(dev.metrics[key], cpu.metrics[key]), t_eig)
    for key in ("ftle_max", "ftle_min"):
        if key in cpu.metrics:
            row(f"{key} (abs)", float(np.max(np.abs(dev.metrics[key] - cpu.metrics[key]))), t_ftle)
    for key in ("chaotic_dim", "n_pos", "n_neg", "n_pruned"):
        if key in cpu.metrics:
            row(f"{key} (entries that differ)", float(np.sum(dev.metrics[key] != cpu.metrics[key])), 0.0)
    if cpu.status != dev.status:
        row(f"status {cpu.status} vs {dev.status}", 1.0, 0.0)
    return rows


def time_steps(config: RunConfig, steps: int, warmup: int = 3) -> dict[str, float]:
    """Median per-step seconds of ``advance`` (spectrum + tangent step + update), of the spectrum alone, and one
    finite-time spectrum, on ``config.device``, for the first ``warmup + steps`` steps of ``config``."""
    device = config.device
    per_step, spectrum = [], []
    with device_settings(device):
        training = Training(config)
        for i in range(warmup + steps):
            x, y = training.sampler.batch(training.dataset, training.step)
            theta = training.params[0].detach()
            _sync(device)
            start = time.perf_counter()
            training._spectrum(theta, x.to(theta.dtype), y)
            _sync(device)
            middle = time.perf_counter()
            training.advance()
            _sync(device)
            end = time.perf_counter()
            if i >= warmup:
                spectrum.append(middle - start)
                per_step.append(end - middle)
        start = time.perf_counter()
        ftle = training.tangent.lyapunov(tol=config.lyapunov_tol)
        _sync(device)
        lyap = time.perf_counter() - start
    return {"step": statistics.median(per_step), "spectrum": statistics.median(spectrum), "ftle": lyap,
            "chaotic_dim": float(ftle.chaotic_dim), "steps": float(len(per_step))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="the device checked against the CPU (cpu: a dry run of this script, exact equality)")
    parser.add_argument("--steps", type=int, default=60, help="timed steps of the paper MLP run on --device")
    parser.add_argument("--cpu-steps", type=int, default=10, help="timed steps of the same run on the CPU")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds after which timing stops")
    parser.add_argument("--skip-equality", action="store_true")
    parser.add_argument("--short", action="store_true", help="3 steps per equality configuration (a dry run)")
    args = parser.parse_args(argv)
    check_device_available(args.device)
    torch.set_num_threads(1)
    started = time.perf_counter()
    info = device_info(args.device)
    print(f"# gpu_check: {info.get('name')} (torch {info['torch_version']}, CUDA {info['cuda_version']}); "
          f"CPU {platform.processor() or platform.machine()}, 1 torch thread; {time.strftime('%Y-%m-%d %H:%M')}")
    ok = True
    if not args.skip_equality:
        print("\n| configuration | quantity | measured | tolerance | ok |\n| --- | --- | ---: | ---: | :---: |")
        for name, config in EQUALITY_CONFIGS.items():
            if args.short:
                config = dataclasses.replace(config, steps=3, tangent_steps=(3,) if config.tangent_steps else ())
            for cfg_name, quantity, value, tol, good in compare(name, config, args.device):
                ok &= good
                print(f"| {cfg_name} | {quantity} | {value:.3g} | {tol:.0e} | {'yes' if good else 'NO'} |",
                      flush=True)
    paper = reference_runs(load_profile("paper"))
    mlp = next(c for c in paper.values() if c.model == "mlp" and c.dataset == "usps" and c.momentum == 0.0)
    rows = []
    for device, steps in ((args.device, args.steps), ("cpu", args.cpu_steps)):
        if time.perf_counter() - started > args.budget or steps <= 0:
            print(f"(timing on {device} skipped: --budget {args.budget:.0f} s spent or no steps)")
            continue
        config = dataclasses.replace(mlp, device=device, steps=steps + 3, tangent_steps=(steps + 3,),
                                     snapshot_steps=())
        rows.append((device, time_steps(config, steps)))
    print(f"\nPaper-profile MLP/USPS reference run ({mlp.label()}; spectrum + tangent map every step):\n")
    print("| device | timed steps | per step (advance) | spectrum alone | one finite-time spectrum | chaotic dim |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for device, t in rows:
        print(f"| {device} | {t['steps']:.0f} | {t['step']:.3f} s | {t['spectrum']:.3f} s | {t['ftle']:.1f} s | "
              f"{t['chaotic_dim']:.0f} |")
    if len(rows) == 2:
        total = mlp.steps
        print(f"\nPer-step speed-up {rows[1][1]['step'] / rows[0][1]['step']:.1f}x; the run's {total:,} steps: "
              f"{total * rows[0][1]['step'] / 3600:.1f} h on {args.device} vs {total * rows[1][1]['step'] / 3600:.1f} "
              f"h on the CPU (plus {len(mlp.tangent_steps)} finite-time spectra).")
    print(f"\nequality: {'all within tolerance' if ok else 'SOME OUT OF TOLERANCE'}; "
          f"{time.perf_counter() - started:.0f} s in total")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
