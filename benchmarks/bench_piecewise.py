"""The dense Hessian of a piecewise-linear network from N - n_max columns (chaosnb.piecewise_linear) against the
full reverse-over-reverse Hessian (curvature.dense_hessian), on USPS batches, interleaved in one run.

Prints, per model and dtype: seconds of both (median of the repeats), the ratio, the ideal ratio N / (N - n_max)
(the products saved; the Gauss-Newton block of the largest layer is not free), the time of the eigendecomposition
that follows in a spectrum (`curvature.symmetric_eigh`, the part this does not change), and the largest difference
between the two Hessians relative to max|H|.

    .venv/bin/python benchmarks/bench_piecewise.py --threads 1 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def _timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default="cnn,mlp")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--data", default=os.environ.get("CHAOSNB_DATA", "../shared/data"))
    args = parser.parse_args()
    os.environ["CHAOSNB_DATA"] = args.data
    torch.set_num_threads(args.threads)

    from chaosnb.curvature import dense_hessian, symmetric_eigh
    from chaosnb.data import BatchSampler, load_dataset
    from chaosnb.models import FlatModel, build_model
    from chaosnb.piecewise_linear import layer_blocks, piecewise_linear_hessian

    data = load_dataset("usps")
    sampler = BatchSampler(len(data.train_x), 8, seed=42)
    print(f"threads {args.threads}, repeats {args.repeats} (interleaved), load {os.getloadavg()[0]:.1f}")
    print(f"{'model':5} {'dtype':8} {'N':>5} {'cols':>5} {'dense s':>8} {'pw s':>7} {'ratio':>6} {'ideal':>6} "
          f"{'eigh s':>7} {'max|dH|/max|H|':>15}")
    for name in args.models.split(","):
        for dtype_name in args.dtypes.split(","):
            dtype = getattr(torch, dtype_name)
            flat = FlatModel(build_model(name, dtype=dtype))
            theta = flat.initial_theta()
            x, y = sampler.batch(data, 0)
            x = x.to(dtype)
            loss = flat.loss_fn(x, y)
            dense_hessian(loss, theta), piecewise_linear_hessian(flat, theta, x, y)  # warm up
            dense_times, pw_times = [], []
            for _ in range(args.repeats):  # interleaved: both see the same load
                t, full = _timed(lambda: dense_hessian(loss, theta), 1)  # noqa: B023
                dense_times.append(t)
                t, fast = _timed(lambda: piecewise_linear_hessian(flat, theta, x, y), 1)  # noqa: B023
                pw_times.append(t)
            eig_t, _ = _timed(lambda: symmetric_eigh(full), max(1, args.repeats // 2))  # noqa: B023
            n = flat.num_params
            cols = n - max(size for _, size in layer_blocks(flat))
            d, p = statistics.median(dense_times), statistics.median(pw_times)
            err = float((fast - full).abs().max() / full.abs().max())
            print(f"{name:5} {dtype_name:8} {n:>5} {cols:>5} {d:>8.3f} {p:>7.3f} {d / p:>5.2f}x {n / cols:>5.2f}x "
                  f"{eig_t:>7.3f} {err:>15.1e}")
    print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
