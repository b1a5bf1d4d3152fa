"""chaosnb.verdicts, section A / B.3 / C.1 / C.2: each verdict flips between its statuses on synthetic inputs, and
the helpers it relies on (slope intervals, log-stretch growth, the random-overlap distribution) are checked against
independent references (the existing trend estimate, Monte Carlo)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chaosnb import verdicts as V
from chaosnb.config import RunConfig
from chaosnb.experiments import load_profile
from chaosnb.subspace import overlap, random_orthonormal_basis, random_overlap_monte_carlo
from chaosnb.toy import sgd_path, toy_phase_steps
from chaosnb.train import RunResult

TH = load_profile("quick")["verdicts"]
STEPS = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256, 512])  # log-spaced tangent steps


def tangent_run(steps=STEPS, diverged_at: int | None = None, **metrics) -> RunResult:
    """A run whose metrics are recorded at the given tangent steps."""
    data = {}
    for name, values in metrics.items():
        data[name] = np.asarray(values, dtype=np.float64)
        data[f"{name}__step"] = np.asarray(steps, dtype=np.int64)
    return RunResult(RunConfig(steps=int(steps[-1]), tangent_steps=tuple(int(s) for s in steps)), data,
                     status="diverged" if diverged_at is not None else "done", steps_done=int(steps[-1]),
                     diverged_at=diverged_at)


# ---------------------------------------------------------------------------------------------- A
def test_tolerance_check_and_theorem_verdict_flip():
    ok, bad = V.tolerance_check("a", 1e-12, 1e-10), V.tolerance_check("b", 1e-3, 1e-10)
    assert ok.passed and not bad.passed
    assert not V.tolerance_check("nan", math.nan, 1.0).passed  # a failed computation never passes
    assert V.tolerance_check("zero mismatches", 0, 0).passed
    assert V.theorem_figure("Theorem X", "c", [ok, ok], "m", "k").status == V.REPRODUCED
    assert V.theorem_figure("Theorem X", "c", [ok, bad], "m", "k").status == V.PARTLY
    assert V.theorem_figure("Theorem X", "c", [bad], "m", "k").status == V.NOT_REPRODUCED
    with pytest.raises(ValueError, match="no checks"):
        V.theorem_figure("Theorem X", "c", [], "m", "k")


# ---------------------------------------------------------------------------------------------- B.3.1
def _toy(noise: float, seed: int = 0, start=(math.pi - 0.05, 0.05)):
    return toy_phase_steps(sgd_path(start=start, lr=0.1, steps=400, noise_std=noise, seed=seed))


def test_toy_verdict_on_the_real_paths_and_its_control():
    phases = _toy(0.1, 42)
    seeds = [_toy(0.1, s)["ordered"] for s in range(10)]
    ridge = _toy(0.0, start=(math.pi - 0.05, 0.0))
    assert phases["ordered"] and not ridge["ordered"]  # the ridge path never leaves y = 0: the order must differ
    assert V.toy_order_figure(phases, seeds, ridge["ordered"], TH["toy"]).status == V.REPRODUCED


@pytest.mark.parametrize("ordered, seeds, control, status", [
    (True, [True] * 10, False, V.REPRODUCED),
    (True, [True] * 5 + [False] * 5, False, V.PARTLY),  # not robust to the noise
    (True, [True] * 10, True, V.PARTLY),  # the criterion would also accept a path where the order must differ
    (False, [False] * 10, True, V.NOT_REPRODUCED),
])
def test_toy_verdict_flips(ordered, seeds, control, status):
    phases = {"negative_first": 0, "positive": 30, "negative_again": 80 if ordered else None, "ordered": ordered}
    assert V.toy_order_figure(phases, seeds, control, TH["toy"]).status == status


def test_toy_seed_check_is_not_testable_without_seeds():
    j = V.toy_order_figure({"ordered": True}, [], False, TH["toy"])
    assert j.checks[1].passed is None and j.status == V.REPRODUCED


# ---------------------------------------------------------------------------------------------- statistics
def test_slope_estimate_matches_trend_estimate_and_widens_with_few_points():
    rng = np.random.default_rng(0)
    t = np.arange(0, 500, 10)
    y = 0.002 * t + rng.normal(0, 0.1, t.size)
    run = RunResult(RunConfig(steps=500), {"m": y, "m__step": t})
    ref, est = V.trend_estimate(run, "m", per=1), V.slope_estimate(t, y)
    assert est.value == pytest.approx(ref.value) and est.low == pytest.approx(ref.low)
    assert est.positive
    two = V.slope_estimate([0, 1], [0, 5])
    assert two.value == pytest.approx(5) and two.low == -math.inf and two.high == math.inf
    assert math.isnan(V.slope_estimate([1], [1]).value)


def test_kendall_fall_and_theil_sen_interval():
    t = np.log(STEPS.astype(float))
    drop_plateau = np.where(STEPS < 8, 500.0 - 100 * np.arange(STEPS.size), 200.0) + np.arange(STEPS.size) % 2
    tau, p = V.kendall_fall(STEPS, drop_plateau)  # a quick drop, then a plateau: a fall for the rank test
    assert tau < 0 and p < 0.05
    assert V.kendall_fall(STEPS, drop_plateau[::-1])[1] > 0.5 and V.kendall_fall([1, 2], [2, 1]) == (math.nan, 1.0)
    steady = 400.0 - 30 * t + np.random.default_rng(0).normal(0, 5, STEPS.size)
    assert V.theil_sen_estimate(t, steady).negative
    assert V.theil_sen_estimate(t, steady).value == pytest.approx(-30, abs=5)
    noise = np.random.default_rng(1).normal(0, 1, STEPS.size)
    flat = V.theil_sen_estimate(t, noise)
    assert flat.low < 0 < flat.high
    exact = V.theil_sen_estimate(np.arange(6.0), 3.0 * np.arange(6.0))
    assert exact.value == pytest.approx(3.0) and exact.low == pytest.approx(3.0)
    assert V.theil_sen_estimate([0, 1], [1, 0]).low == -math.inf


def test_log_stretch_growth_separates_constant_from_levelling_exponents():
    constant = V.log_stretch_growth(tangent_run(ftle_max=np.full(STEPS.size, 0.05)))
    assert constant["late_rate"].value == pytest.approx(0.05) and constant["ref_rate"] == pytest.approx(0.05)
    burst = V.log_stretch_growth(tangent_run(ftle_max=3.0 * (1 - np.exp(-STEPS / 4.0)) / STEPS))
    assert abs(burst["late_rate"].value) < 1e-6 and burst["ref_rate"] > 0
    assert burst["t_ref"] == 256 and burst["T"] == 512
    assert V.log_stretch_growth(tangent_run(steps=STEPS[:2], ftle_max=[0.1, 0.05])) is None


# ---------------------------------------------------------------------------------------------- C.1.1
def lyap_run(kind: str, censored: bool = False, steps=STEPS) -> RunResult:
    t = steps.astype(float)
    lam = {"edge": 3.0 * (1 - np.exp(-t / 4.0)) / t,  # burst, then the stretch levels off: exponent -> 0
           "constant": np.full(t.size, 0.05),  # S(t) linear: no convergence
           "slow": 0.05 + 0.2 / t}[kind]  # drops (1/t), but to 0.05, not to 0
    fmin = -1.0 / np.sqrt(t) if kind != "constant" else -0.5 - 0.01 * np.log(t)
    return tangent_run(steps, ftle_max=lam, ftle_min=fmin, ftle_unresolved=np.full(t.size, 5 if censored else 0))


@pytest.mark.parametrize("kinds, status", [
    (["edge"] * 4, V.REPRODUCED),
    (["slow"] * 4, V.PARTLY),  # the drop is what 1/t gives; the late growth rate stays at the exponent
    (["constant"] * 4, V.NOT_REPRODUCED),
])
def test_lyapunov_exponent_verdict_flips(kinds, status):
    j = V.lyapunov_exponent_figure({f"run {i}": lyap_run(k) for i, k in enumerate(kinds)}, TH["lyapunov"])
    assert j.status == status, j.reason


def test_lyapunov_exponent_verdict_needs_a_majority_and_counts_censoring():
    mixed = {"a": lyap_run("edge"), "b": lyap_run("constant"), "c": lyap_run("constant")}
    j = V.lyapunov_exponent_figure(mixed, TH["lyapunov"])
    assert [c.passed for c in j.checks] == [False, False, False]
    censored = V.lyapunov_exponent_figure({"a": lyap_run("edge", censored=True)}, TH["lyapunov"])
    assert censored.checks[2].passed is None and "1 runs have unresolved" in censored.limits
    one_step = {"a": lyap_run("edge", steps=STEPS[:1])}
    assert V.lyapunov_exponent_figure(one_step, TH["lyapunov"]).status == V.NOT_TESTABLE
    two_steps = V.lyapunov_exponent_figure({"a": lyap_run("edge", steps=STEPS[:2])}, TH["lyapunov"])
    assert two_steps.checks[1].passed is None  # no late window with two points


# ---------------------------------------------------------------------------------------------- C.1.2
def count_run(start: float, end: float, rate: float, uncertain: float = 0.0) -> RunResult:
    """A chaotic count relaxing from ``start`` to ``end`` with time constant 1/rate (in steps)."""
    dims = np.round(end + (start - end) * np.exp(-rate * STEPS))
    return tangent_run(chaotic_dim=dims, non_chaotic_dim=1000 - dims, ftle_uncertain=np.full(STEPS.size, uncertain))


FAST, SLOW, RISE = count_run(500, 100, 0.5), count_run(500, 100, 0.002), count_run(100, 400, 0.05)
MODELS = {"mlp 1": "mlp", "mlp 2": "mlp", "cnn 1": "cnn", "cnn 2": "cnn"}


@pytest.mark.parametrize("runs, status", [
    ((FAST, FAST, SLOW, SLOW), V.REPRODUCED),
    ((FAST, FAST, RISE, RISE), V.PARTLY),  # the CNN count does not fall
    ((SLOW, SLOW, FAST, FAST), V.PARTLY),  # both fall, the MLP's more slowly
    ((RISE, RISE, RISE, RISE), V.NOT_REPRODUCED),
])
def test_chaotic_count_verdict_flips(runs, status):
    j = V.chaotic_count_figure(dict(zip(MODELS, runs, strict=True)), MODELS, TH["lyapunov"])
    assert j.status == status, j.reason


def test_chaotic_count_fall_must_exceed_the_censoring():
    censored = count_run(500, 100, 0.5, uncertain=450)  # could be 550 at the end: no certain fall
    j = V.chaotic_count_figure({"mlp 1": censored, "mlp 2": censored, "cnn 1": SLOW, "cnn 2": SLOW}, MODELS,
                               TH["lyapunov"])
    assert j.checks[0].passed is False and j.checks[1].passed is True
    assert "2 runs have uncertain" in j.limits
    one = {n: tangent_run(STEPS[:1], chaotic_dim=[5], non_chaotic_dim=[5]) for n in MODELS}
    assert V.chaotic_count_figure(one, MODELS, TH["lyapunov"]).status == V.NOT_TESTABLE


# ---------------------------------------------------------------------------------------------- C.1.3
T13 = np.array([2, 4, 6])


def prune_runs(sgd_max=0.05, cgd_max=0.01, pos_non=(100, 40, 0), others_non=(900, 880, 870),
               pos_uncertain=None) -> dict:
    other = {"ftle_max": [0.2, 0.1, 0.0], "non_chaotic_dim": list(others_non)}
    out = {n: tangent_run(T13, **{**other, "ftle_max": [0.3, 0.1, v]}) for n, v in
           (("sgd", sgd_max), ("chaotic", cgd_max), ("neg", cgd_max))}
    extra = {} if pos_uncertain is None else {"ftle_uncertain": list(pos_uncertain)}
    out["pos"] = tangent_run(T13, ftle_max=[0.5, 0.6, 0.7], non_chaotic_dim=list(pos_non), **extra)
    return out


@pytest.mark.parametrize("kwargs, status, zero", [
    ({}, V.REPRODUCED, True),
    ({"pos_non": (100, 60, 20)}, V.REPRODUCED, None),  # falling but 0 is beyond the horizon: not testable
    ({"sgd_max": 0.005}, V.PARTLY, True),  # CGD does not dampen more than SGD
    ({"sgd_max": 0.005, "pos_non": (900, 950, 990)}, V.NOT_REPRODUCED, False),
])
def test_pruning_lyapunov_verdict_flips(kwargs, status, zero):
    j = V.pruning_lyapunov_figure(prune_runs(**kwargs))
    assert j.status == status and j.checks[2].passed is zero, j.reason
    if zero is None:
        assert "horizon too short" in j.checks[2].measured and "near step 7" in j.checks[2].measured
        assert "not testable at this horizon" in j.limits


def test_pruning_lyapunov_zero_below_the_resolution_or_not_monotone():
    """Not testable, without an extrapolated rate: every remaining non-chaotic exponent is uncertain (the true count
    lies in [0, 20]); or the count falls but rises again on the way. With 5 of 20 uncertain the rate is used."""
    j = V.pruning_lyapunov_figure(prune_runs(pos_non=(100, 60, 20), pos_uncertain=(0, 10, 20)))
    assert j.checks[2].passed is None and "lies in [0, 20]" in j.checks[2].measured
    assert "near step" not in j.checks[2].measured and j.status == V.REPRODUCED
    j = V.pruning_lyapunov_figure(prune_runs(pos_non=(100, 10, 40), pos_uncertain=(0, 0, 5)))
    assert j.checks[2].passed is None and "not monotonically" in j.checks[2].measured
    assert "near step" not in j.checks[2].measured
    j = V.pruning_lyapunov_figure(prune_runs(pos_non=(100, 60, 20), pos_uncertain=(0, 0, 5)))
    assert "near step 7" in j.checks[2].measured


def test_pruning_lyapunov_not_testable_and_bad_input():
    runs = {n: tangent_run(T13[:1], ftle_max=[0.1], non_chaotic_dim=[10]) for n in ("sgd", "chaotic", "neg")}
    runs["pos"] = tangent_run(np.array([3]), ftle_max=[0.1], non_chaotic_dim=[10], diverged_at=4)
    runs["sgd"] = tangent_run(np.array([5]), ftle_max=[0.1], non_chaotic_dim=[10])
    assert V.pruning_lyapunov_figure(runs).status == V.NOT_TESTABLE
    with pytest.raises(ValueError, match="missing \\['pos'\\]"):
        V.pruning_lyapunov_figure({n: runs[n] for n in ("sgd", "chaotic", "neg")})


# ---------------------------------------------------------------------------------------------- C.2.1
@pytest.mark.parametrize("a, b, n", [(1, 1, 20), (3, 5, 30), (10, 4, 25), (20, 20, 40)])
def test_random_overlap_moments_and_quantile_match_monte_carlo(a, b, n):
    mc = random_overlap_monte_carlo(a, b, n, samples=3000, seed=a + b)
    assert mc.samples.mean() == pytest.approx(max(a, b) / n, abs=4 * mc.sem)
    assert mc.samples.var() == pytest.approx(V.random_overlap_variance(a, b, n), rel=0.1)
    q = V.random_overlap_quantile(a, b, n, 0.95)
    exceed = float((mc.samples > q).mean())
    assert abs(exceed - 0.05) < 4 * math.sqrt(0.05 * 0.95 / 3000), exceed


def test_random_overlap_edge_cases():
    assert V.random_overlap_variance(5, 10, 10) == 0.0 and V.random_overlap_quantile(5, 10, 10, 0.99) == 1.0
    with pytest.raises(ValueError, match="1 <= a, b <= n"):
        V.random_overlap_variance(0, 3, 10)


def curve(overlaps, d0=20, dims=20, n=200) -> dict:
    ov = np.asarray(overlaps, dtype=np.float64)
    dims = np.full(ov.size, float(dims))
    return {"s0": 1, "d0": d0, "n": n, "steps": np.arange(2, 2 + ov.size), "overlap": ov, "dims": dims,
            "baseline": np.maximum(d0, dims) / n}


def random_curve(seed: int, points: int = 4, d=20, n=200) -> dict:
    """Overlaps of genuinely random subspaces: must not pass as 'above the baseline'."""
    rng = np.random.default_rng(seed)
    v0 = random_orthonormal_basis(n, d, rng)
    return curve([overlap(v0, random_orthonormal_basis(n, d, rng)) for _ in range(points)], d, d, n)


STABLE = [curve([0.8, 0.6, 0.55, 0.54, 0.54]) for _ in range(4)]
LATE_HIGH = [curve([0.95, 0.93]) for _ in range(4)]


def named(curves):
    return {f"run {i}": c for i, c in enumerate(curves)}


@pytest.mark.parametrize("first, later, status", [
    (STABLE, LATE_HIGH, V.REPRODUCED),
    (STABLE, [curve([0.5, 0.3])] * 4, V.PARTLY),  # the later t0 falls below the early one
    ([random_curve(s) for s in range(4)], [random_curve(s + 10) for s in range(4)], V.NOT_REPRODUCED),
    ([], [], V.NOT_TESTABLE),
])
def test_subspace_overlap_verdict_flips(first, later, status):
    j = V.subspace_overlap_figure(named(first), named(later), TH["subspace"])
    assert j.status == status, j.reason


def test_subspace_overlap_uses_the_run_fraction_and_the_full_space_is_not_testable():
    mixed = STABLE[:2] + [random_curve(s) for s in range(2)]  # 2 of 4 above: below the 75 % required
    j = V.subspace_overlap_figure(named(mixed), {}, TH["subspace"])
    assert j.checks[0].passed is False and j.checks[0].measured.startswith("2/4")
    full = curve([1.0, 1.0, 1.0], d0=200, dims=200)  # chaotic subspace = everything: random overlap is 1 too
    j = V.subspace_overlap_figure({"a": full}, {}, TH["subspace"])
    assert j.checks[0].passed is None
