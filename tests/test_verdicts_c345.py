"""chaosnb.verdicts, perturbation section (C.3-C.5): each verdict flips between its statuses on synthetic runs, and
the new runs of the catalogue (equal lr, the eps sweep over every configuration) are what the verdicts assume."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chaosnb import experiments as E
from chaosnb import verdicts as V
from chaosnb.config import RunConfig
from chaosnb.perturb import STRATEGIES
from chaosnb.train import RunResult

TH = {**E.load_profile("quick")["verdicts"]["perturbation"], **E.load_profile("quick")["verdicts"]["distances"]}
EPS = 0.1
ORDERED = (0.05, 0.04, 0.03, 0.02, 0.01)  # growth rates per step, in the expected order
REVERSED = ORDERED[::-1]


def prun(rates=ORDERED, *, steps: int = 40, eps: float = EPS, model: str = "mlp", lr: float = 0.01,
         acc: np.ndarray | None = None, val: np.ndarray | None = None, val_steps=None) -> RunResult:
    """A perturbation run whose strategy s separates as d_s(t) = eps exp(rate_s t) (NaN rate: no direction)."""
    t = np.arange(steps + 1)
    d = eps * np.exp(np.outer(t, np.asarray(rates, dtype=np.float64)))
    metrics = {"distance": d, "distance__step": t}
    if acc is not None:
        metrics |= {"train_acc": acc, "train_acc__step": np.arange(len(acc))}
    if val is not None:
        metrics |= {"val_acc": val, "val_acc__step": np.asarray(val_steps)}
    config = RunConfig(model=model, lr=lr, steps=steps, perturb_eps=eps, perturb_strategies=STRATEGIES)
    return RunResult(config, metrics, steps_done=steps)


def test_bootstrap_mean_excludes_zero_only_for_a_real_shift():
    rng = np.random.default_rng(1)
    shifted = V.bootstrap_mean(0.5 + 0.1 * rng.standard_normal(50))
    assert shifted.positive and shifted.low < 0.5 < shifted.high
    centred = V.bootstrap_mean(0.1 * rng.standard_normal(50))
    assert not centred.positive and not centred.negative
    single = V.bootstrap_mean([1.0, math.nan])
    assert single.n == 1 and single.low == -math.inf


def test_order_along_curve_separates_the_final_step():
    final, along, n = V.order_along_curve(prun(ORDERED))
    assert (final, along, n) == (0.0, 0.0, 30)
    # ordered at T only (rates swap sign of their differences just before T): along the curve it is reversed
    t = np.arange(41)
    d = EPS * np.exp(np.outer(t, REVERSED))
    d[-1] = EPS * np.exp(np.asarray(ORDERED) * 40)
    res = RunResult(prun().config, {"distance": d, "distance__step": t}, steps_done=40)
    final, along, _ = V.order_along_curve(res)
    assert final == 0.0 and along == pytest.approx(1.2)


# ---------------------------------------------------------------- C.3.1
def c31(cnn_rate=0.06, mlp_rate=0.03, mom=1.5, fmnist=1.0, rates=ORDERED, equal=True, nan=False, mlp_mom=None):
    """Runs of Figure C.3.1: CNN growth ``cnn_rate`` x rates, momentum multiplies it by ``mom``, FMNIST by
    ``fmnist``; the equal-lr pair compares a CNN at ``cnn_rate`` with an MLP at ``mlp_rate`` (with momentum)."""
    base = np.asarray(rates) / 0.03

    def r(scale):
        return prun(np.full(5, np.nan) if nan else base * scale)

    results, pairs = {}, {}
    for ds, f in (("USPS", 1.0), ("FMNIST", fmnist)):
        results[f"{ds} CNN"] = r(cnn_rate * f)
        results[f"{ds} CNN, momentum"] = r(cnn_rate * f * mom)
        results[f"{ds} MLP, momentum"] = r(mlp_rate * f * mom)
        if mlp_mom is not None:  # Figure 3a's MLP without momentum: the momentum check for the MLP too
            results[f"{ds} MLP"] = r(mlp_rate * f * mom / mlp_mom)
        pairs[ds] = (r(cnn_rate * f * mom), r(mlp_rate * f * mom))
    return V.distance_growth_figure(results, pairs if equal else {}, TH)


@pytest.mark.parametrize(("kwargs", "status"), [
    ({}, V.REPRODUCED),
    ({"mom": 0.7}, V.PARTLY),  # momentum diverges less
    ({"fmnist": 0.01}, V.PARTLY),  # datasets differ by far more than x2
    ({"cnn_rate": 0.02, "mom": 0.7, "fmnist": 0.01, "rates": REVERSED}, V.NOT_REPRODUCED),
    ({"nan": True, "equal": False}, V.NOT_TESTABLE),
])
def test_c31_flips(kwargs, status):
    j = c31(**kwargs)
    assert j.status == status, j.reason


def test_c31_checks_momentum_per_model_given():
    names = [c.name for c in c31().checks]
    assert "USPS: CNN with momentum > without" in names and "USPS: MLP with momentum > without" not in names
    j = c31(mlp_mom=0.5)  # the MLP diverges less with momentum: one check of the momentum claim fails
    failed = [c.name for c in j.checks if c.passed is False]
    assert j.status == V.PARTLY
    assert failed == ["USPS: MLP with momentum > without", "FMNIST: MLP with momentum > without"]
    assert c31(mlp_mom=2.0).status == V.REPRODUCED


def test_c31_equal_lr_over_seeds_needs_every_seed_to_agree():
    """With several seeds the interval is over the seeds' means: one seed with the opposite sign undoes it."""
    base = c31(equal=False)
    results = {f"{ds} {m}": prun(np.asarray(ORDERED) * k) for ds in ("USPS", "FMNIST")
               for m, k in (("CNN", 2), ("CNN, momentum", 3), ("MLP, momentum", 1.5))}

    def pair(cnn_scale):
        return prun(np.asarray(ORDERED) * cnn_scale), prun(np.asarray(ORDERED))

    agree = V.distance_growth_figure(results, {"USPS": [pair(2), pair(1.5), pair(3)]}, TH)
    split = V.distance_growth_figure(results, {"USPS": [pair(2), pair(1.5), pair(0.5)]}, TH)
    first = [c for c in agree.checks if c.name.startswith("USPS: CNN > MLP")][0]
    assert first.passed is True and "over 3 seeds" in first.measured and agree.status == V.REPRODUCED
    assert [c for c in split.checks if c.name.startswith("USPS: CNN > MLP")][0].passed is False
    assert base.status == V.REPRODUCED


def test_c31_without_equal_lr_runs_leaves_that_check_undecided():
    j = c31(equal=False)
    undecided = [c for c in j.checks if c.passed is None]
    assert len(undecided) == 2 and all("equal lr" in c.name for c in undecided) and j.status == V.REPRODUCED


# ---------------------------------------------------------------- C.3.2
def c32(gap=0.003, big_runs=0, only_step0=False):
    out = {}
    for k, name in enumerate(("USPS MLP", "USPS MLP, momentum", "USPS CNN", "USPS CNN, momentum")):
        g = 0.1 if k < big_runs else gap
        steps = [0] if only_step0 else [0, 50, 100, 150]
        base = np.linspace(0.3, 0.9, len(steps))[:, None]
        val = np.hstack([base, base + g * np.array([1.0, 0.8, 1.2, 0.9, 1.1])])
        out[name] = prun(val=val, val_steps=steps)
    return V.validation_gap_figure(out, TH)


@pytest.mark.parametrize(("kwargs", "status"), [
    ({}, V.REPRODUCED), ({"big_runs": 2}, V.PARTLY), ({"big_runs": 4}, V.NOT_REPRODUCED),
    ({"only_step0": True}, V.NOT_TESTABLE),
])
def test_c32_flips(kwargs, status):
    j = c32(**kwargs)
    assert j.status == status, j.reason


def test_c32_reads_validation_not_minibatch_accuracy():
    acc = np.tile(np.array([0.5, 0.9, 0.9, 0.9, 0.9, 0.9]), (40, 1))  # huge mini-batch gaps
    val = np.tile(np.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.5]) + np.arange(6) * 1e-3, (3, 1))
    res = prun(acc=acc, val=val, val_steps=[0, 20, 40])
    assert V.validation_gap_figure({"run": res}, TH).status == V.REPRODUCED


# ---------------------------------------------------------------- C.3.3
def c33(other=-0.05, chaotic=0.05, maxnc=-0.2, early_only_bad=False, n=400):
    rng = np.random.default_rng(7)
    out = {}
    for name in ("(a)", "(b)", "(c)", "(d)"):
        base = rng.uniform(0.2, 0.8, n)
        cols = [base]
        for s in STRATEGIES:
            shift = {"chaotic": chaotic, "max_non_chaotic": maxnc}.get(s, other)
            col = base + shift + 0.02 * rng.standard_normal(n)
            if s == "chaotic" and early_only_bad:
                col[: n // 4] = base[: n // 4] - 0.02 + 0.02 * rng.standard_normal(n // 4)
            cols.append(col)
        out[name] = prun(acc=np.stack(cols, axis=1))
    return V.large_eps_accuracy_figure(out, TH)


@pytest.mark.parametrize(("kwargs", "status"), [
    ({}, V.REPRODUCED),
    ({"early_only_bad": True}, V.PARTLY),
    ({"maxnc": 0.0}, V.PARTLY),
    ({"other": 0.05, "chaotic": -0.05, "maxnc": 0.2}, V.NOT_REPRODUCED),
])
def test_c33_flips(kwargs, status):
    j = c33(**kwargs)
    assert j.status == status, j.reason


def test_c33_early_check_fails_when_only_the_start_is_worse():
    j = c33(early_only_bad=True)
    assert [c.passed for c in j.checks] == [True, True, False, True]


# ---------------------------------------------------------------- C.4.1
SWAP1 = (0.04, 0.05, 0.03, 0.02, 0.01)  # one adjacent swap: MPD 0.2


def c41(main=ORDERED, small=REVERSED, large=REVERSED, n_configs=3):
    sweeps = {f"config {k}": {0.001: prun(small, eps=0.001), 0.1: prun(main), 10.0: prun(large, eps=10.0)}
              for k in range(n_configs)}
    return V.eps_order_figure(sweeps, 0.1, TH)


@pytest.mark.parametrize(("kwargs", "status"), [
    ({}, V.REPRODUCED),
    ({"small": ORDERED}, V.PARTLY),  # small eps as ordered as 0.1 (the linear regime)
    ({"small": SWAP1, "large": SWAP1}, V.REPRODUCED),  # one adjacent swap more than at 0.1 meets the margin
    ({"main": REVERSED, "small": ORDERED, "large": ORDERED}, V.NOT_REPRODUCED),
    ({"n_configs": 1}, V.NOT_TESTABLE),
])
def test_c41_flips(kwargs, status):
    j = c41(**kwargs)
    assert j.status == status, j.reason


def test_c41_uses_every_configuration_with_the_eps_compared():
    """A middle eps swept on one configuration only does not remove the others from the end-vs-main checks."""
    sweeps = {f"c{k}": {0.001: prun(REVERSED, eps=0.001), 0.1: prun(ORDERED), 10.0: prun(REVERSED, eps=10.0)}
              for k in range(3)}
    sweeps["c0"][1.0] = prun(SWAP1, eps=1.0)
    j = V.eps_order_figure(sweeps, 0.1, TH)
    assert j.status == V.REPRODUCED and "over 3 configurations" in j.checks[0].measured


def test_c41_margin_is_an_effect_size_not_a_count():
    """Ends that are more random by less than one swap do not count, however many eps values there are."""
    sweeps = {f"c{k}": {e: prun(ORDERED, eps=e) for e in (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0)} for k in range(4)}
    j = V.eps_order_figure(sweeps, 0.1, TH)
    assert [c.passed for c in j.checks] == [True, False, False] and j.status == V.PARTLY
    with pytest.raises(ValueError, match="eps_main 0.5 is not in the sweep"):
        V.eps_order_figure(sweeps, 0.5, TH)


# ---------------------------------------------------------------- C.5.1
def c5(upper_scale=1.01, lower_scale=0.99, unresolved=0, noisy=False, nan=False, top=1.0, steps=40):
    """A run with d_s(t) = sqrt(eps^2 + a_s t + b_s t^2) and a stage-1 run whose bounds are the extreme distances
    times ``upper_scale`` / ``lower_scale`` before T (the extremes at T, the upper one times ``top``)."""
    t = np.arange(steps + 1, dtype=np.float64)
    a = np.array([4e-3, 3e-3, 2e-3, 1e-3, 0.0])
    b = np.array([4e-4, 3e-4, 2e-4, 1e-4, -2.4e-6])
    d = np.sqrt(EPS**2 + np.outer(t, a) + np.outer(t**2, b))
    if noisy:
        d = d * (1 + 0.9 * np.sin(7 * t))[:, None]
    if nan:
        d[:] = np.nan
    res = RunResult(prun().config, {"distance": d, "distance__step": t.astype(int)}, steps_done=steps)
    tan = np.array([10, 20, 30, steps])
    hi, lo = d[tan, 0] * upper_scale, d[tan, 4] * lower_scale
    hi[-1], lo[-1] = d[-1, 0] * top, d[-1, 4]
    if nan:
        hi = lo = np.full(4, 0.2)
    metrics = {"ftle_max": np.log(hi / EPS) / tan, "ftle_min": np.log(lo / EPS) / tan,
               "ftle_unresolved": np.full(4, unresolved), "ftle_uncertain": np.zeros(4)}
    for k in list(metrics):
        metrics[f"{k}__step"] = tan
    stage1 = RunResult(RunConfig(steps=steps, tangent_steps=tuple(int(x) for x in tan)), metrics, steps_done=steps)
    return {"(a)": (res, stage1)}


@pytest.mark.parametrize(("kwargs", "status"), [
    ({}, V.REPRODUCED),
    ({"upper_scale": 0.5}, V.PARTLY),
    ({"lower_scale": 2.0}, V.PARTLY),
    ({"top": 3.0}, V.PARTLY),  # the maximal-chaotic distance far from the upper bound at T
    ({"noisy": True, "upper_scale": 0.01, "lower_scale": 100.0, "top": 0.1}, V.NOT_REPRODUCED),
    ({"nan": True}, V.NOT_TESTABLE),
])
def test_c5_flips(kwargs, status):
    j = V.bounds_figure(c5(**kwargs), EPS, TH)
    assert j.status == status, j.reason


def test_c5_counts_censoring():
    """A distance below a lower bound drawn from the smallest RESOLVED exponent is no violation when exponents are
    unresolved (the true bound is lower): undecided, and counted."""
    resolved = V.bounds_figure(c5(lower_scale=2.0), EPS, TH)
    censored = V.bounds_figure(c5(lower_scale=2.0, unresolved=3), EPS, TH)
    lower = [c for c in censored.checks if c.name.startswith("lower bound")][0]
    assert resolved.status == V.PARTLY and censored.status == V.REPRODUCED
    # the pairs above the drawn bound hold whatever the censoring; the 4 below it are undecided, not violations
    assert lower.passed is True and "11 hold, 0 violate, 4 undecided" in lower.measured
    assert "depend on censoring: 4 of 15" in censored.measured


# ---------------------------------------------------------------- the catalogue
@pytest.fixture(params=E.profile_names())
def profile(request):
    return E.load_profile(request.param)


def test_equal_lr_pairs_share_lr_and_horizon(profile):
    pairs = E.equal_lr_runs(profile)
    assert set(pairs) == {"USPS", "FMNIST"}
    for cnn, mlp in pairs.values():
        assert (cnn.model, mlp.model) == ("cnn", "mlp") and cnn.momentum == mlp.momentum == 0.9
        assert cnn.lr == mlp.lr and cnn.steps == mlp.steps and cnn.perturb_eps == mlp.perturb_eps
        assert mlp in E.perturbation_runs(profile, mlp.perturb_eps).values()
        assert cnn.stage1().tangent_steps[-1] == cnn.steps
    configs = E.all_configs(profile)
    assert all(c in configs for pair in pairs.values() for c in pair)


def test_equal_lr_seeds_are_full_replicates(profile):
    seeded = E.equal_lr_seed_runs(profile)
    assert {k: v[0] for k, v in seeded.items()} == E.equal_lr_runs(profile)
    spec = profile["perturbation"]["equal_lr"]
    for label, pairs in seeded.items():
        expected = len(spec.get("seeds", [profile["seed"]])) if label in spec.get("seed_datasets", seeded) else 1
        assert len(pairs) == expected and len({p[0].seed for p in pairs}) == expected
        for cnn, mlp in pairs:
            assert cnn.seed == mlp.seed and cnn.lr == mlp.lr and cnn.steps == mlp.steps
            assert cnn.stage1().tangent_steps[-1] == cnn.steps == mlp.stage1().tangent_steps[-1]
    configs = set(E.all_configs(profile))
    assert all(c in configs for pairs in seeded.values() for pair in pairs for c in pair)


def test_eps_sweep_covers_every_configuration_at_the_ends_and_main(profile):
    sweeps = E.eps_sweep_all_runs(profile)
    reference = E.reference_runs(profile)
    assert set(sweeps) == set(reference)
    eps_all = [float(e) for e in profile["eps_sweep"]["eps"]]
    main = float(profile["perturbation"]["eps_main"])
    for name, sweep in sweeps.items():
        assert {min(eps_all), main, max(eps_all)} <= set(sweep)
        assert all(run.stage1().steps == run.steps and run.perturb_eps == e for e, run in sweep.items())
        ref = reference[name]
        for run in sweep.values():  # stage 1 is the reference run where the horizons agree: nothing recomputed
            if run.steps == ref.steps:
                assert run.stage1() == ref
