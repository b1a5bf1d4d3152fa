"""chaosnb.verdicts: every figure's verdict is shown to flip between its statuses on synthetic runs built for it."""

from __future__ import annotations

import numpy as np
import pytest

from chaosnb import verdicts as V
from chaosnb.config import RunConfig
from chaosnb.experiments import load_profile
from chaosnb.train import RunResult

STEPS = 400
WINDOW = 20
TH = load_profile("quick")["verdicts"]["pruning"]


def run(final: float, *, start: float = 0.1, rise: int = STEPS, diverged_at: int | None = None) -> RunResult:
    """A run whose training accuracy climbs linearly from ``start`` to ``final`` over ``rise`` steps, then stays;
    a diverged run's record stops at its divergence step."""
    steps = np.arange(STEPS if diverged_at is None else diverged_at + 1)
    acc = start + (final - start) * np.minimum(steps / rise, 1.0)
    metrics = {"train_acc": acc, "train_acc__step": steps}
    status = "diverged" if diverged_at is not None else "done"
    return RunResult(RunConfig(steps=STEPS), metrics, status=status, steps_done=len(steps) - 1 if diverged_at
                     else STEPS, diverged_at=diverged_at)


SGD = run(0.9)
SLOW = run(0.5)  # ends 0.4 below SGD, gains 0.4 (ratio 0.5)
STUCK = run(0.2)  # gains 0.1 of SGD's 0.8
AS_SGD = run(0.89)
FAST_CRASH = run(0.88, rise=40, diverged_at=150)  # reaches 0.81 (0.9 x SGD) at step ~37, then diverges
FAST_NO_CRASH = run(0.88, rise=40)
SLOW_CRASH = run(0.3, diverged_at=150)
FLAT = run(0.12)  # a "SGD" that has not started to learn


def judge(figure, sgd=SGD, chaotic=SLOW, neg=SLOW, pos=FAST_CRASH):
    return V.pruning_figure(figure, {"sgd": sgd, "chaotic": chaotic, "neg": neg, "pos": pos}, WINDOW, TH)


# figure -> status -> the runs (keyword arguments of judge) that must produce it
SCENARIOS = {
    "Figure 1": {V.REPRODUCED: {}, V.PARTLY: {"pos": FAST_NO_CRASH},
                 V.NOT_REPRODUCED: {"chaotic": AS_SGD, "pos": FAST_NO_CRASH}},
    "Figure B.1.1": {V.REPRODUCED: {}, V.PARTLY: {"neg": AS_SGD}, V.NOT_REPRODUCED: {"chaotic": AS_SGD, "neg": AS_SGD},
                     V.NOT_TESTABLE: {"sgd": FLAT}},
    "Figure B.1.2": {V.REPRODUCED: {}, V.PARTLY: {"pos": FAST_NO_CRASH},
                     V.NOT_REPRODUCED: {"pos": run(0.4)}},
    "Figure B.1.3": {V.REPRODUCED: {"chaotic": STUCK, "neg": STUCK}, V.PARTLY: {"chaotic": run(0.7), "neg": run(0.7)},
                     V.NOT_REPRODUCED: {"chaotic": AS_SGD, "neg": AS_SGD, "pos": run(0.4)}},
    "Figure B.1.4": {V.REPRODUCED: {}, V.PARTLY: {"pos": SLOW_CRASH},
                     V.NOT_REPRODUCED: {"chaotic": AS_SGD, "neg": AS_SGD, "pos": run(0.4)}},
    "Figure B.1.5": {V.REPRODUCED: {}, V.PARTLY: {"chaotic": AS_SGD},
                     V.NOT_REPRODUCED: {"chaotic": run(0.95, rise=20), "neg": AS_SGD, "pos": SLOW}},
}


@pytest.mark.parametrize(("figure", "status"), [(f, s) for f, cases in SCENARIOS.items() for s in cases])
def test_pruning_verdicts_flip(figure, status):
    j = judge(figure, **SCENARIOS[figure][status])
    assert j.status == status, j.reason
    assert j.claim == V.PRUNING_CLAIMS[figure] and j.figure == figure
    assert len(j.checks) == len(V.PRUNING_CHECKS[figure]) and all(c.measured for c in j.checks)


def test_every_pruning_figure_reaches_three_statuses():
    for figure, cases in SCENARIOS.items():
        assert {V.REPRODUCED, V.PARTLY, V.NOT_REPRODUCED} <= set(cases), figure


def test_slower_needs_the_margin():
    """A CGD run just inside the margin is not "slower"; just outside it is (margin from profiles.yaml)."""
    margin = TH["acc_margin"]
    inside, outside = run(0.9 - 0.8 * margin), run(0.9 - 1.2 * margin)
    assert judge("Figure B.1.1", chaotic=inside, neg=inside).status == V.NOT_REPRODUCED
    assert judge("Figure B.1.1", chaotic=outside, neg=outside).status == V.REPRODUCED


def test_fast_means_before_the_chaotic_run_and_not_after_sgd():
    early_chaotic = run(0.88, rise=20)  # the chaotic run gets to the level before the positive one
    check = judge("Figure B.1.2", chaotic=early_chaotic).checks[0]
    assert check.passed is False and "chaotic step" in check.measured
    late = run(0.85, rise=STEPS, diverged_at=STEPS - 5)  # gets there after SGD does
    assert judge("Figure B.1.2", pos=late).checks[0].passed is False
    assert judge("Figure B.1.2").checks[0].passed is True


def test_comparisons_with_an_sgd_that_has_not_learned_are_not_testable():
    j = judge("Figure B.1.3", sgd=FLAT)
    assert [c.passed for c in j.checks] == [None, None, None, True]  # only the crash can be judged
    assert j.status == V.REPRODUCED and "not testable at this profile" in j.limits
    assert "not testable" in j.reason


def test_combine_is_the_all_any_rule():
    c = lambda passed: V.Check("x", passed, "m")  # noqa: E731
    assert V.combine([c(True), c(True), c(None)]) == V.REPRODUCED
    assert V.combine([c(True), c(False)]) == V.PARTLY
    assert V.combine([c(False), c(None)]) == V.NOT_REPRODUCED
    assert V.combine([c(None)]) == V.combine([]) == V.NOT_TESTABLE


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="unknown pruning figure"):
        V.pruning_figure("Figure 9", {}, WINDOW, TH)
    with pytest.raises(ValueError, match="missing \\['pos'\\]"):
        V.pruning_figure("Figure 1", {"sgd": SGD, "chaotic": SLOW, "neg": SLOW}, WINDOW, TH)


# ---------------------------------------------------------------------------------------------- statistics
def series_run(lr: float = 0.01, every: int = 10, **metrics) -> RunResult:
    """A run recording the given metric arrays every ``every`` steps."""
    n = len(next(iter(metrics.values())))
    steps = np.arange(n) * every
    data = {}
    for name, values in metrics.items():
        data[name], data[f"{name}__step"] = np.asarray(values, dtype=np.float64), steps
    return RunResult(RunConfig(steps=int(steps[-1]) + 1, lr=lr), data, steps_done=int(steps[-1]) + 1)


def ar1(n: int, rho: float, seed: int, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros(n)
    for i in range(1, n):
        x[i] = rho * x[i - 1] + scale * rng.standard_normal()
    return x


def test_trend_interval_detects_a_slope_and_not_autocorrelated_noise():
    t = np.arange(200)
    clean = V.trend_estimate(series_run(m=0.5 * t + 3.0), "m")
    assert clean.value == pytest.approx(50.0) and clean.positive  # 0.5 per 10 steps = 50 per 1000
    wins = 0
    for seed in range(40):  # no trend, strongly autocorrelated noise: the 95% interval covers 0 in most runs
        est = V.trend_estimate(series_run(m=ar1(200, 0.9, seed)), "m")
        wins += est.low <= 0 <= est.high
        assert est.n_eff < 0.2 * est.n  # the autocorrelation shrinks the effective sample size
    assert wins >= 34
    naive_half = 1.96 * np.std(ar1(200, 0.9, 0)) / np.sqrt(200)
    assert V.mean_estimate(ar1(200, 0.9, 0)).high - V.mean_estimate(ar1(200, 0.9, 0)).value > 2 * naive_half


def test_difference_estimate_needs_separation():
    rng = np.random.default_rng(0)
    apart = V.difference_estimate(1.0 + 0.1 * rng.standard_normal(50), 0.1 * rng.standard_normal(50))
    close = V.difference_estimate(0.01 + rng.standard_normal(50), rng.standard_normal(50))
    assert apart.positive and not close.positive and not close.negative


# ---------------------------------------------------------------------------------------------- eigenspaces
LEVEL = load_profile("quick")["verdicts"]["eigen"]["level"]
EDGE = load_profile("quick")["verdicts"]["eigen"]


def edge_run(fraction: float, n: int = 100) -> RunResult:
    count = np.zeros(n)
    count[: int(round(fraction * n))] = 1
    return series_run(n_above_2_over_lr=count, eig_max=np.full(n, 150.0))


@pytest.mark.parametrize(("fractions", "status"), [((0.0, 0.02), V.REPRODUCED), ((0.0, 0.5), V.PARTLY),
                                                   ((0.3, 0.5), V.NOT_REPRODUCED)])
def test_edge_count_verdict_flips(fractions, status):
    results = {f"run {i}": edge_run(f) for i, f in enumerate(fractions)}
    j = V.edge_count_figure("Figure B.2.1", "claim", results, EDGE)
    assert j.status == status, j.reason
    assert "0.75 x 2/lr" in j.checks[0].measured  # 150 * 0.01 / 2


def count_run(pos_slope: float, neg_slope: float, n: int = 100, seed: int = 0) -> RunResult:
    t = np.arange(n)
    return series_run(n_pos=200 + pos_slope * t + ar1(n, 0.5, seed), n_neg=80 + neg_slope * t + ar1(n, 0.5, seed + 1))


def rise_relax_run(n: int = 100) -> RunResult:
    t = np.arange(n)
    return series_run(n_pos=200 + 60 * np.exp(-((t - 20) / 8.0) ** 2), n_neg=np.full(n, 80.0))


@pytest.mark.parametrize(("runs", "status"), [
    ({"USPS MLP sigmoid": count_run(1.0, -1.0), "USPS MLP relu": count_run(-1.0, 0.0), "USPS CNN": rise_relax_run()},
     V.REPRODUCED),
    ({"USPS MLP sigmoid": count_run(1.0, -1.0), "USPS MLP relu": count_run(0.0, 0.0), "USPS CNN": count_run(1, 0)},
     V.PARTLY),
    ({"USPS MLP sigmoid": count_run(-1.0, 1.0), "USPS MLP relu": count_run(1.0, 0.0)}, V.NOT_REPRODUCED),
])
def test_count_trend_verdict_flips(runs, status):
    j = V.count_trend_figure("Figure B.2.2", "claim", runs, LEVEL)
    assert j.status == status, j.reason


def overlap_run(pos_minus_neg: float, slope: float, n: int = 100, seed: int = 0) -> RunResult:
    t = np.arange(n)
    neg = 0.05 + slope * t + 0.002 * ar1(n, 0.3, seed)
    return series_run(cos_pos_mean=neg + pos_minus_neg, cos_neg_mean=neg)


@pytest.mark.parametrize(("run", "status"), [(overlap_run(0.02, -1e-4), V.REPRODUCED),
                                             (overlap_run(0.02, 1e-4), V.PARTLY),
                                             (overlap_run(-0.02, 1e-4), V.NOT_REPRODUCED)])
def test_mean_overlap_verdict_flips(run, status):
    assert V.mean_overlap_figure("Figure B.2.3", "claim", {"run": run}, LEVEL).status == status


def extreme_run(top_minus_min: float, top_slope: float, early_drop: float, n: int = 100) -> RunResult:
    t = np.arange(n)
    low = 0.1 + early_drop * (t < 25) + 0.005 * ar1(n, 0.3, 1)
    return series_run(cos_top=0.1 + top_minus_min + top_slope * t + 0.005 * ar1(n, 0.3, 2), cos_min=low)


@pytest.mark.parametrize(("run", "status"), [(extreme_run(0.2, 1e-3, 0.05), V.REPRODUCED),
                                             (extreme_run(0.2, -1e-3, 0.0), V.PARTLY),
                                             (extreme_run(-0.3, -1e-3, -0.05), V.NOT_REPRODUCED)])
def test_extreme_overlap_verdict_flips(run, status):
    j = V.extreme_overlap_figure("Figure B.2.4", "claim", {"run": run}, LEVEL)
    assert j.status == status, j.reason


# ---------------------------------------------------------------------------------------------- main text
def start_run(final: float, start: int) -> RunResult:
    r = run(final)
    return RunResult(RunConfig(steps=STEPS, optimizer="cgd", prune_start=start), r.metrics, steps_done=STEPS)


@pytest.mark.parametrize(("finals", "status"), [((0.9, 0.8, 0.7, 0.6), V.REPRODUCED),
                                                ((0.9, 0.8, 0.82, 0.86), V.PARTLY),
                                                ((0.5, 0.6, 0.7, 0.8), V.NOT_REPRODUCED)])
def test_pruning_start_verdict_flips(finals, status):
    results = {"sgd": run(finals[0]), "late": start_run(finals[1], 300), "mid": start_run(finals[2], 200),
               "early": start_run(finals[3], 100)}
    j = V.pruning_start_figure(results, WINDOW, TH)
    assert j.status == status, j.reason
    assert [c.name for c in j.checks][:3] == ["SGD > from step 300", "from step 300 > from step 200",
                                             "from step 200 > from step 100"]


def distance_run(curves: np.ndarray, every: int = 5) -> RunResult:
    """A perturbation run whose five strategy distances are the columns of ``curves``."""
    steps = np.arange(curves.shape[0]) * every
    return RunResult(RunConfig(steps=int(steps[-1])), {"distance": curves, "distance__step": steps},
                     steps_done=int(steps[-1]))


def ordered_curves(n: int = 41, swap_before_end: bool = False) -> np.ndarray:
    t = np.arange(n)[:, None]
    rates = np.array([0.05, 0.03, 0.02, 0.01, 0.0])  # max chaotic > chaotic > random > non-chaotic > max non-chaotic
    curves = 0.1 * np.exp(rates * t)
    if swap_before_end:  # wrong order everywhere except at the last step, where L_T chose the directions
        curves[:-1] = curves[:-1, ::-1]
    return curves


@pytest.mark.parametrize(("swapped", "status"), [((False, False), V.REPRODUCED), ((False, True), V.PARTLY),
                                                 ((True, True), V.NOT_REPRODUCED)])
def test_strategy_order_is_judged_before_the_final_step(swapped, status):
    results = {name: distance_run(ordered_curves(swap_before_end=s)) for name, s in zip(("A", "B"), swapped,
                                                                                        strict=True)}
    j = V.strategy_order_figure(results)
    assert j.status == status, j.reason
    if all(swapped):
        assert "MPD at T = 200: 0 (by construction)" in j.measured  # right at T, wrong before: not reproduced


def test_strategy_order_not_testable_without_steps_before_t():
    two = distance_run(ordered_curves(2))
    assert V.strategy_order_figure({"A": two}).status == V.NOT_TESTABLE


def test_centred_r2_needs_more_than_the_mean():
    t = np.arange(1, 50, dtype=float)
    eps = 0.1
    exact = np.sqrt(eps**2 + 0.02 * t + 0.001 * t**2)
    assert V.centred_r2(t, exact, eps) == pytest.approx(1.0)
    assert V.centred_r2(t, exact, eps, "walk") < 0.99  # the t^2 term matters
    flat = np.sqrt(eps**2 + 1.0 + 0.01 * np.sin(t))  # a constant offset: the uncentred R^2 would look good
    assert V.centred_r2(t, flat, eps) < 0.5


def stage1_run(lmax: float, lmin: float, tangent_steps=(50, 100, 150, 200)) -> RunResult:
    steps = np.asarray(tangent_steps)
    return RunResult(RunConfig(steps=int(steps[-1])), {"ftle_max": np.full(len(steps), lmax), "ftle_max__step": steps,
                                                       "ftle_min": np.full(len(steps), lmin),
                                                       "ftle_min__step": steps}, steps_done=int(steps[-1]))


def fit_curves(lmax: float, n: int = 41, every: int = 5, eps: float = 0.1) -> np.ndarray:
    """Distances that follow sqrt(eps^2 + a t + b t^2) (random, chaotic) and eps exp(t lmax) (max chaotic)."""
    t = np.arange(n)[:, None] * every
    base = np.sqrt(eps**2 + 2e-4 * t + 1e-6 * t**2)
    curves = np.repeat(base, 5, axis=1)
    curves[:, 0] = eps * np.exp(lmax * t[:, 0])
    return curves


@pytest.mark.parametrize(("stage", "curves", "status"), [
    ((0.01, -0.01), fit_curves(0.01), V.REPRODUCED),
    ((0.01, -0.01), fit_curves(0.02), V.PARTLY),  # max chaotic grows e^2 faster than the bound
    ((0.001, 0.0005), fit_curves(0.02) + 0.3 * np.sin(np.arange(41))[:, None] ** 2, V.NOT_REPRODUCED),
])
def test_distance_fit_verdict_flips(stage, curves, status):
    th = load_profile("quick")["verdicts"]["distances"]
    j = V.distance_fit_figure(distance_run(curves), stage1_run(*stage), 0.1, th)
    assert j.status == status, j.reason


# ---------------------------------------------------------------------------------------------- seeds (issue 11 item 4)
def test_paired_bootstrap_is_deterministic_and_covers_the_mean():
    one = V.paired_bootstrap([0.3], [0.1])
    assert (one.value, one.low, one.high, one.n) == (pytest.approx(0.2), pytest.approx(0.2), pytest.approx(0.2), 1)
    a, b = [0.9, 0.85, 0.8], [0.6, 0.7, 0.75]
    est = V.paired_bootstrap(a, b)
    assert est.value == pytest.approx(np.mean(np.subtract(a, b)))
    assert est.low == pytest.approx(0.05) and est.high == pytest.approx(0.3)  # n = 3: the extremes (1/27 > 2.5 %)
    assert V.paired_bootstrap(a, b) == est  # fixed generator
    many = V.paired_bootstrap(np.linspace(0, 1, 40))
    assert 0.35 < many.low < 0.5 < many.high < 0.65  # ~ mean +- 2 sd / sqrt(n) for 40 seeds
    assert V.paired_bootstrap([np.nan, 1.0], [0.0, 0.5]).n == 1  # non-finite pairs dropped
    with pytest.raises(ValueError, match="pair up"):
        V.paired_bootstrap([1.0, 2.0], [1.0])


def panel(chaotic=SLOW, neg=SLOW, pos=FAST_CRASH, sgd=SGD):
    return {"sgd": sgd, "chaotic": chaotic, "neg": neg, "pos": pos}


def test_seeded_pruning_verdict_needs_every_seed_past_the_margin():
    """Seeds with gaps ~0.39, 0.39, 0.01: the mean gap (0.26) clears the margin, the paired interval does not."""
    good = [panel(), panel(), panel()]
    j = V.pruning_figure("Figure B.1.1", good, WINDOW, TH)
    assert j.status == V.REPRODUCED and "3 seeds" in j.limits and "bootstrap" in j.limits, j.reason
    one_bad = [panel(), panel(), panel(chaotic=AS_SGD, neg=AS_SGD)]
    j = V.pruning_figure("Figure B.1.1", one_bad, WINDOW, TH)
    assert j.status == V.NOT_REPRODUCED, j.reason
    assert "gap +0.263 [+0.00974, +0.389]" in j.checks[0].measured and "3 seeds" in j.checks[0].measured
    assert V.pruning_figure("Figure B.1.1", one_bad[:1], WINDOW, TH).status == V.REPRODUCED  # one seed would pass
    assert (j.seeds, V.pruning_figure("Figure B.1.1", one_bad[:1], WINDOW, TH).seeds) == (3, 1)


def test_seeded_crash_and_fast_checks():
    crash_two_of_three = [panel(), panel(), panel(pos=FAST_NO_CRASH)]
    j = V.pruning_figure("Figure B.1.2", crash_two_of_three, WINDOW, TH)
    assert [c.passed for c in j.checks] == [True, False] and j.status == V.PARTLY
    assert "diverged in 2 of 3 seeds" in j.checks[1].measured
    late_in_one = [panel(), panel(), panel(pos=run(0.85, rise=STEPS, diverged_at=STEPS - 5))]
    j = V.pruning_figure("Figure B.1.2", late_in_one, WINDOW, TH)
    assert j.checks[0].passed is False and "positive in 3 of 3 seeds" in j.checks[0].measured, j.reason
    assert V.pruning_figure("Figure B.1.2", [panel(), panel()], WINDOW, TH).status == V.REPRODUCED


def test_seeded_stuck_check_uses_the_ratio_interval():
    stuck = [{**panel(chaotic=STUCK, neg=STUCK), "sgd": SGD} for _ in range(3)]
    assert V.pruning_figure("Figure B.1.3", stuck, WINDOW, TH).checks[0].passed is True
    mixed = stuck[:2] + [panel(chaotic=run(0.7), neg=run(0.7))]
    j = V.pruning_figure("Figure B.1.3", mixed, WINDOW, TH)
    assert j.checks[0].passed is False and "ratio" in j.checks[0].measured, j.reason


def test_seeded_pruning_start_verdict_flips():
    def seed(finals):
        return {"sgd": run(finals[0]), "late": start_run(finals[1], 300), "mid": start_run(finals[2], 200),
                "early": start_run(finals[3], 100)}

    ordered = [seed((0.9, 0.8, 0.7, 0.6)), seed((0.88, 0.79, 0.72, 0.55)), seed((0.91, 0.82, 0.69, 0.6))]
    assert V.pruning_start_figure(ordered, WINDOW, TH).status == V.REPRODUCED
    one_swapped = ordered[:2] + [seed((0.9, 0.7, 0.8, 0.6))]  # late < mid in one seed: that pair is not ordered
    j = V.pruning_start_figure(one_swapped, WINDOW, TH)
    assert j.status == V.PARTLY and [c.passed for c in j.checks] == [True, False, True, True], j.reason
    assert V.pruning_start_figure([seed((0.5, 0.6, 0.7, 0.8))] * 3, WINDOW, TH).status == V.NOT_REPRODUCED


def test_seeded_count_trend_needs_the_trend_in_every_seed():
    up = [count_run(1.0, -1.0, seed=s) for s in (0, 2, 4)]
    j = V.count_trend_figure("Figure B.2.2", "claim", {"USPS MLP sigmoid": up}, LEVEL)
    assert j.status == V.REPRODUCED and "USPS MLP sigmoid 3" in j.limits and j.seeds == 3, j.reason
    one_down = up[:2] + [count_run(-1.0, 1.0, seed=6)]
    assert V.count_trend_figure("Figure B.2.2", "claim", {"USPS MLP sigmoid": one_down}, LEVEL).status == \
        V.NOT_REPRODUCED


def test_seeded_overlap_verdicts_flip():
    good = [overlap_run(0.02, -1e-4, seed=s) for s in range(3)]
    assert V.mean_overlap_figure("Figure B.2.3", "claim", {"run": good}, LEVEL).status == V.REPRODUCED
    bad = good[:2] + [overlap_run(-0.02, 1e-4, seed=5)]
    assert V.mean_overlap_figure("Figure B.2.3", "claim", {"run": bad}, LEVEL).status == V.NOT_REPRODUCED
    ext = [extreme_run(0.2, 1e-3, 0.05)] * 3
    assert V.extreme_overlap_figure("Figure B.2.4", "claim", {"run": ext}, LEVEL).status == V.REPRODUCED
    ext_bad = ext[:2] + [extreme_run(-0.3, -1e-3, -0.05)]
    assert V.extreme_overlap_figure("Figure B.2.4", "claim", {"run": ext_bad}, LEVEL).status == V.NOT_REPRODUCED
    edge = [edge_run(0.0), edge_run(0.0), edge_run(0.5)]  # pooled: 1/6 of the spectra above the edge
    assert V.edge_count_figure("Figure B.2.1", "claim", {"run": edge}, EDGE).status == V.NOT_REPRODUCED


# ---------------------------------------------------------------------------------------------- paper numerics (item 5)
N_SYN = 1000


def spectra_run(n_pos, n_neg, rank=None, every: int = 100, **fields) -> RunResult:
    n_pos, n_neg = np.asarray(n_pos, dtype=float), np.asarray(n_neg, dtype=float)
    rank = n_pos + n_neg if rank is None else np.asarray(rank, dtype=float)
    r = series_run(every=every, n_pos=n_pos, n_neg=n_neg, rank=rank, n_zero=N_SYN - rank)
    return RunResult(RunConfig(steps=r.config.steps, spectrum_every=every, **fields), r.metrics,
                     arrays={"final_theta": np.zeros((1, N_SYN))}, steps_done=r.steps_done)


EXACT_COUNTS = spectra_run(np.linspace(60, 80, 10), np.linspace(40, 20, 10))


@pytest.mark.parametrize(("paper", "status"), [
    (spectra_run(np.linspace(560, 580, 10), np.linspace(440, 420, 10)), V.REPRODUCED),
    (spectra_run(np.linspace(560, 580, 10), np.linspace(60, 30, 10)), V.PARTLY),  # a zero tolerance after all
    (spectra_run(np.linspace(60, 80, 10), np.linspace(40, 20, 10) + np.arange(10) * 5.0), V.NOT_REPRODUCED),
])
def test_paper_counts_verdict_flips(paper, status):
    j = V.paper_counts_figure(EXACT_COUNTS, paper)
    assert j.status == status, j.reason
    assert j.figure == "Figure B.2.2 (paper numerics)"


def loss_run(losses, n_pruned=100.0) -> RunResult:
    losses = np.asarray(losses, dtype=float)
    steps = np.arange(losses.size)
    return RunResult(RunConfig(steps=int(losses.size)), {"train_loss": losses, "train_loss__step": steps,
                                                         "n_pruned": np.full(losses.size, n_pruned),
                                                         "n_pruned__step": steps}, steps_done=int(losses.size))


@pytest.mark.parametrize(("paper_neg", "exact_neg", "status"), [
    ([2.3, 2.0, 1.6], [2.3, 2.1, 1.9, 1.7, 1.5], V.REPRODUCED),
    ([2.3, 2.1, 1.9], [2.3, 2.1, 1.9, 1.7, 1.5], V.PARTLY),  # float32 runs coincide too
    ([2.3, 2.1, 1.9], [2.3, 1.7, 1.2, 1.7, 1.5], V.NOT_REPRODUCED),  # the exact runs differ already
])
def test_paper_pruning_verdict_flips(paper_neg, exact_neg, status):
    exact = {"chaotic": loss_run([2.3, 2.1, 1.9, 1.7, 1.5]), "neg": loss_run(exact_neg)}
    paper = {"chaotic": loss_run([2.3, 2.1, 1.9]), "neg": loss_run(paper_neg)}
    j = V.paper_pruning_figure(exact, paper)
    assert j.status == status, j.reason
    assert "over 3 steps" in j.checks[0].measured  # judged over the paper runs' horizon only


def dim_run(dims, steps=(1, 2, 4)) -> RunResult:
    steps = np.asarray(steps)
    return RunResult(RunConfig(steps=int(steps[-1])), {"chaotic_dim": np.asarray(dims, dtype=float),
                                                       "chaotic_dim__step": steps},
                     arrays={"final_theta": np.zeros((1, N_SYN))}, steps_done=int(steps[-1]))


@pytest.mark.parametrize(("paper", "exact", "status"), [
    ((480, 470, 460), (30, 35, 40), V.REPRODUCED),
    ((480, 470, 460), (300, 320, 330), V.PARTLY),  # the exact dimension starts high too
    ((40, 45, 50), (300, 320, 330), V.NOT_REPRODUCED),
])
def test_paper_dimension_verdict_flips(paper, exact, status):
    j = V.paper_dimension_figure(dim_run(exact), dim_run(paper))
    assert j.status == status, j.reason
    with pytest.raises(ValueError, match="no tangent step in common"):
        V.paper_dimension_figure(dim_run(exact), dim_run(paper, steps=(3, 5, 6)))


def test_seed_band_is_the_mean_and_range_of_the_smoothed_seeds():
    from chaosnb.plots import moving_average, seed_band

    a, b = (np.arange(6), np.arange(6.0)), (np.arange(5), 2 * np.arange(5.0))
    steps, mean, low, high = seed_band([a, b], 2)
    assert list(steps) == [0, 1, 2, 3, 4]  # the common prefix
    sa, sb = moving_average(a[1][:5], 2), moving_average(b[1], 2)
    assert np.allclose(mean, (sa + sb) / 2) and np.allclose(low, np.minimum(sa, sb)) and np.allclose(high, sb)
