"""Each figure's criterion as tested code: recorded runs in, a :class:`Judgement` out.

A judgement is a list of :class:`Check` objects, each a claim of the paper made testable (with the measured
effect and the threshold it was held to), combined by one rule, :func:`combine`: reproduced when every testable
check holds, not reproduced when none does, partly otherwise; "not testable at this profile" when no check can be
decided at the profile's horizon (for example when SGD itself has not started to learn, a comparison with it says
nothing). Thresholds come from the profile's ``verdicts`` section (``profiles.yaml``, where each is explained).
Notebooks call these functions and display / glue the result; no criterion is written in a notebook.

Sections, in this order: the pruning figures (main-text Figure 1, Figures B.1.1-B.1.5) and Figure 2, with paired
bootstrap intervals over seeds; the eigenspace figures (B.2.1-B.2.7), whose trends and differences count only when
their confidence interval excludes 0; Figure 3; the theorems of appendix A, the toy of B.3.1, the Lyapunov figures
C.1.1-C.1.3 and the subspace overlaps of C.2.1; the perturbation figures C.3.1-C.5.1; the paper's numerics beside
the exact ones (B.2.2, Figure 1, C.1.2).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from chaosnb.analysis import first_step_reaching, tail_mean, window_mean
from chaosnb.train import RunResult

REPRODUCED, PARTLY, NOT_REPRODUCED = "reproduced", "partly", "not reproduced"
NOT_TESTABLE = "not testable at this profile"
STATUSES = (REPRODUCED, PARTLY, NOT_REPRODUCED, NOT_TESTABLE)
PRUNE_NAMES = {"sgd": "SGD", "chaotic": "chaotic pruned", "neg": "negative pruned", "pos": "positive pruned"}


@dataclass(frozen=True)
class Check:
    """One testable part of a claim: ``passed`` is None when it cannot be decided at this profile."""

    name: str
    passed: bool | None
    measured: str

    def describe(self) -> str:
        mark = {True: "holds", False: "fails", None: "not testable"}[self.passed]
        return f"{self.name}: {mark} ({self.measured})"


@dataclass(frozen=True)
class Judgement:
    """The verdict of one figure: status, the checks behind it, the criterion in words, and what limits it."""

    figure: str
    claim: str
    status: str
    checks: tuple[Check, ...]
    criterion: str
    measured: str
    limits: str = ""
    seeds: int = 1  # independent training seeds behind the verdict (shown on the front page)

    @property
    def reason(self) -> str:
        """The criterion, then every check with its outcome, then what is censored or confounded."""
        parts = [self.criterion, "; ".join(c.describe() for c in self.checks)]
        if self.limits:
            parts.append(f"Limits: {self.limits}")
        return ". ".join(p.rstrip(".") for p in parts if p) + "."


def combine(checks: Sequence[Check]) -> str:
    """The all/any rule shared by every figure: reproduced if all testable checks hold, not reproduced if none
    does, partly otherwise; not testable if no check is."""
    decided = [c.passed for c in checks if c.passed is not None]
    if not decided:
        return NOT_TESTABLE
    if all(decided):
        return REPRODUCED
    return PARTLY if any(decided) else NOT_REPRODUCED


# ---------------------------------------------------------------------------------------------- pruning (B.1, Fig. 1)
PRUNING_CLAIMS = {
    "Figure 1": "chaos pruning (CGD) slows training down compared with SGD; positive pruning crashes the run",
    "Figure B.1.1": "with momentum, chaotic/negative pruning converges much more slowly than SGD",
    "Figure B.1.2": "positive pruning reaches high performance quickly, then the loss becomes singular and the run "
                    "crashes",
    "Figure B.1.3": "for the CNN, chaotic/negative pruning cannot improve much; positive pruning is fast, then crashes",
    "Figure B.1.4": "MLP on Fashion-MNIST: positive pruning quickly reaches high performance then crashes; "
                    "chaotic/negative pruning need much longer",
    "Figure B.1.5": "CNN on Fashion-MNIST: positive pruning quickly reaches high performance then crashes; "
                    "chaotic/negative pruning need much longer",
}
PRUNING_CHECKS = {
    "Figure 1": ("slower:chaotic", "crash"),
    "Figure B.1.1": ("slower:chaotic", "slower:neg"),
    "Figure B.1.2": ("fast:pos", "crash"),
    "Figure B.1.3": ("stuck:chaotic", "stuck:neg", "fast:pos", "crash"),
    "Figure B.1.4": ("fast:pos", "crash", "slower:chaotic", "slower:neg"),
    "Figure B.1.5": ("fast:pos", "crash", "slower:chaotic", "slower:neg"),
}


# the runs of one pruning panel (or of Figure 2) for one seed, by name
_PanelRuns = Mapping[str, RunResult]


def seed_panels(results: _PanelRuns | Sequence[_PanelRuns]) -> list[_PanelRuns]:
    """One panel's runs (a mapping name -> RunResult) or a sequence of them, one per seed, as a list."""
    panels = [results] if isinstance(results, Mapping) else list(results)
    if not panels:
        raise ValueError("no runs: pass a mapping name -> RunResult, or a list of them (one per seed)")
    return panels


@dataclass(frozen=True)
class PruningStats:
    """What the pruning checks read from the four runs of a panel (smoothed mini-batch training accuracy)."""

    final: dict[str, float]  # mean over the last ``window`` steps
    start: dict[str, float]  # mean over the first ``window`` steps
    reach: dict[str, int | None]  # first step whose trailing mean reaches ``level``
    level: float  # fast_fraction x SGD's final accuracy
    diverged: dict[str, int]  # run -> step at which it diverged
    steps: int


def pruning_stats(results: Mapping[str, RunResult], window: int, fast_fraction: float) -> PruningStats:
    """Final and initial smoothed accuracies, the first step at ``fast_fraction`` of SGD's final accuracy, and the
    divergence steps of the runs ``sgd``, ``chaotic``, ``neg``, ``pos`` of one panel."""
    final = {n: tail_mean(r, "train_acc", window) for n, r in results.items()}
    start = {n: window_mean(r, "train_acc", 0, window) for n, r in results.items()}
    level = fast_fraction * final["sgd"]
    reach = {n: first_step_reaching(r, "train_acc", level, window) for n, r in results.items()}
    diverged = {n: int(r.diverged_at) for n, r in results.items() if r.diverged and r.diverged_at is not None}
    return PruningStats(final, start, reach, level, diverged, int(results["sgd"].config.steps))


def _mean(values) -> float:
    return float(np.mean(np.asarray(list(values), dtype=np.float64)))


def _pruning_check(kind: str, run: str | None, stats: Sequence[PruningStats], th: Mapping[str, float]) -> Check:
    """One check over the seeds' stats: every effect size is a paired bootstrap interval over seeds (a run and SGD
    of the same seed), and the check passes only when the whole interval clears the margin."""
    n = len(stats)
    seeds = "" if n == 1 else f", {n} seeds"
    sgd_learned = _mean(s.final["sgd"] - s.start["sgd"] for s in stats) >= th["sgd_min_gain"]
    name = PRUNE_NAMES.get(run or "", "")
    if kind == "slower":  # ends below SGD by a margin
        gap = paired_bootstrap([s.final["sgd"] for s in stats], [s.final[run] for s in stats])
        measured = (f"final accuracy {_mean(s.final[run] for s in stats):.3f} vs SGD "
                    f"{_mean(s.final['sgd'] for s in stats):.3f}, gap {gap.text()}{seeds}")
        label = f"{name} ends >= {th['acc_margin']:g} below SGD"
        if not sgd_learned:
            return Check(label, None, measured + "; SGD has not learned")
        return Check(label, gap.low >= th["acc_margin"], measured)
    if kind == "stuck":  # improves far less than SGD over the run
        ratios = [(s.final[run] - s.start[run]) / (s.final["sgd"] - s.start["sgd"])
                  if s.final["sgd"] - s.start["sgd"] > 0 else math.nan for s in stats]
        ratio = paired_bootstrap(ratios)
        measured = (f"gain {_mean(s.final[run] - s.start[run] for s in stats):+.3f} vs SGD "
                    f"{_mean(s.final['sgd'] - s.start['sgd'] for s in stats):+.3f} (ratio {ratio.text()}){seeds}")
        label = f"{name} gains <= {th['stuck_ratio']:g} x SGD's gain"
        if not sgd_learned:
            return Check(label, None, measured + "; SGD has not learned")
        return Check(label, bool(ratio.high <= th["stuck_ratio"]), measured)
    if kind == "fast":  # reaches the level before the chaotic-pruned run and no later than SGD
        fmt = lambda step: "never" if step is None else f"step {step}"  # noqa: E731
        censored = lambda s, r: s.reach[r] if s.reach[r] is not None else s.steps + 1  # noqa: E731
        lead_sgd = paired_bootstrap([censored(s, "sgd") for s in stats], [censored(s, run) for s in stats])
        lead_chaotic = paired_bootstrap([censored(s, "chaotic") for s in stats], [censored(s, run) for s in stats])
        all_hit = all(s.reach[run] is not None for s in stats)
        if n == 1:
            s = stats[0]
            measured = (f"first at {s.level:.3f} (= {th['fast_fraction']:g} x SGD's final): positive "
                        f"{fmt(s.reach[run])}, SGD {fmt(s.reach['sgd'])}, chaotic {fmt(s.reach['chaotic'])}")
        else:
            n_hit = sum(s.reach[run] is not None for s in stats)
            measured = (f"first at {th['fast_fraction']:g} x SGD's final, positive in {n_hit} of {n} seeds; steps "
                        f"ahead of SGD {lead_sgd.text()}, ahead of the chaotic "
                        f"step {lead_chaotic.text()} (never = {stats[0].steps + 1}){seeds}")
        label = f"{name} reaches {th['fast_fraction']:g} x SGD's final accuracy first"
        if not sgd_learned:
            return Check(label, None, measured + "; SGD has not learned")
        return Check(label, bool(all_hit and lead_sgd.low >= 0 and lead_chaotic.low > 0), measured)
    if kind == "crash":
        steps = [s.diverged.get("pos") for s in stats]
        hits = [t for t in steps if t is not None]
        if n == 1:
            measured = f"diverged at step {hits[0]}" if hits else f"no divergence in {stats[0].steps} steps"
        else:
            measured = (f"diverged in {len(hits)} of {n} seeds" + (f" (steps {', '.join(map(str, hits))})"
                                                                    if hits else f" ({stats[0].steps} steps)"))
        return Check("positive pruned run diverges" + (" in every seed" if n > 1 else ""), len(hits) == n, measured)
    raise ValueError(f"unknown pruning check {kind!r}")


def _seeds_limit(n: int) -> str:
    if n == 1:
        return "one seed per run"
    return (f"{n} seeds per run (CGD and SGD of one seed share the initialisation and the batches); effect sizes are "
            f"means over seeds with {BOOTSTRAP_LEVEL:.0%} paired percentile-bootstrap intervals, and a check holds "
            "only when the whole interval clears its margin")


def pruning_figure(figure: str, results: _PanelRuns | Sequence[_PanelRuns], window: int,
                   thresholds: Mapping[str, float]) -> Judgement:
    """Verdict of a pruning figure (Figure 1, B.1.1-B.1.5) from its runs ``sgd``, ``chaotic``, ``neg``, ``pos``,
    one mapping per seed (or one mapping: a single seed).

    Checks (each with its effect size, a mean over seeds with a paired bootstrap interval, see
    :func:`paired_bootstrap`): a CGD run ends at least ``acc_margin`` below SGD in smoothed training accuracy
    ("slower": the interval's lower end >= the margin); improves by at most ``stuck_ratio`` times SGD's gain
    ("cannot improve much": upper end <= the ratio); the positive pruned run reaches ``fast_fraction`` x SGD's
    final accuracy in every seed, no later than SGD and before the chaotic-pruned run ("fast"; "never" censored at
    steps + 1); it diverges in every seed ("crash"). The comparisons with SGD are not testable while SGD itself has
    gained less than ``sgd_min_gain`` (mean over seeds).
    """
    if figure not in PRUNING_CHECKS:
        raise ValueError(f"unknown pruning figure {figure!r}; valid: {', '.join(PRUNING_CHECKS)}")
    panels = seed_panels(results)
    for panel in panels:
        missing = {"sgd", "chaotic", "neg", "pos"} - set(panel)
        if missing:
            raise ValueError(f"{figure} needs the runs sgd, chaotic, neg and pos; missing {sorted(missing)}")
    stats = [pruning_stats(panel, window, thresholds["fast_fraction"]) for panel in panels]
    checks = tuple(_pruning_check(*(spec.split(":") + [None])[:2], stats, thresholds)
                   for spec in PRUNING_CHECKS[figure])
    names = list(stats[0].final)
    measured = ("final smoothed training accuracy" + (f" (mean of {len(stats)} seeds) " if len(stats) > 1 else " ")
                + ", ".join(f"{PRUNE_NAMES[n]} {_mean(s.final[n] for s in stats):.3f}" for n in names))
    diverged = [(n, s.diverged[n]) for s in stats for n in names if n in s.diverged]
    measured += "; " + ("diverged: " + ", ".join(f"{PRUNE_NAMES[n]} at step {t}" for n, t in diverged)
                        if diverged else "no run diverged")
    criterion = (f"reproduced if every check holds, partly if some do (accuracies are means over the last {window} "
                 "steps)")
    limits = _seeds_limit(len(stats))
    if any(c.passed is None for c in checks):
        limits += f"; SGD gains less than {thresholds['sgd_min_gain']:g} accuracy in {stats[0].steps} steps, so " \
                  "comparisons with it are not testable at this profile"
    judgement = Judgement(figure, PRUNING_CLAIMS[figure], combine(checks), checks, criterion, measured, limits)
    return dataclasses.replace(judgement, seeds=len(panels))


# ---------------------------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Estimate:
    """A mean or slope with a two-sided confidence interval (``level``), corrected for lag-1 autocorrelation."""

    value: float
    low: float
    high: float
    n: int
    n_eff: float

    def text(self, unit: str = "") -> str:
        return f"{self.value:+.3g}{unit} [{self.low:+.3g}, {self.high:+.3g}]"

    @property
    def positive(self) -> bool:
        return self.low > 0

    @property
    def negative(self) -> bool:
        return self.high < 0


def _z(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2))


def _effective_n(residuals: np.ndarray) -> float:
    """n (1 - rho) / (1 + rho) for the lag-1 autocorrelation rho of the residuals (clipped to [0, 0.99]): recorded
    training curves are strongly autocorrelated, and the naive standard error would be far too small."""
    n = residuals.size
    if n < 3 or float(np.var(residuals)) == 0.0:
        return float(n)
    rho = float(np.corrcoef(residuals[:-1], residuals[1:])[0, 1])
    rho = min(max(rho if math.isfinite(rho) else 0.0, 0.0), 0.99)
    return max(2.0, n * (1 - rho) / (1 + rho))


def mean_estimate(values, level: float = 0.95) -> Estimate:
    """Mean of the finite values with an AR(1)-corrected normal confidence interval."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size < 2:
        value = float(x.mean()) if x.size else math.nan
        return Estimate(value, -math.inf, math.inf, int(x.size), float(x.size))
    n_eff = _effective_n(x - x.mean())
    half = _z(level) * float(x.std(ddof=1)) / math.sqrt(n_eff)
    return Estimate(float(x.mean()), float(x.mean()) - half, float(x.mean()) + half, int(x.size), n_eff)


def trend_estimate(result: RunResult, metric: str, level: float = 0.95, per: int = 1000) -> Estimate:
    """Least-squares slope of a metric against its step (per ``per`` steps) with an AR(1)-corrected confidence
    interval: a trend counts only when its interval excludes 0."""
    steps, values = result.series(metric)
    mask = np.isfinite(values)
    t, y = steps[mask].astype(np.float64), np.asarray(values, dtype=np.float64)[mask]
    if t.size < 3 or np.ptp(t) == 0:
        return Estimate(math.nan, -math.inf, math.inf, int(t.size), float(t.size))
    slope, intercept = np.polyfit(t, y, 1)
    residuals = y - (slope * t + intercept)
    n_eff = _effective_n(residuals)
    dof = max(n_eff - 2, 1.0)
    se = math.sqrt(float(residuals @ residuals) / dof / float(((t - t.mean()) ** 2).sum()) * t.size / n_eff)
    half = _z(level) * se
    return Estimate(float(slope * per), float((slope - half) * per), float((slope + half) * per), int(t.size), n_eff)


def difference_estimate(a, b, level: float = 0.95) -> Estimate:
    """mean(a) - mean(b) of two independent stretches, each with its AR(1)-corrected variance."""
    ea, eb = mean_estimate(a, level), mean_estimate(b, level)
    z = _z(level)
    half = math.hypot((ea.high - ea.value) / z, (eb.high - eb.value) / z) * z
    value = ea.value - eb.value
    return Estimate(value, value - half, value + half, ea.n + eb.n, ea.n_eff + eb.n_eff)


BOOTSTRAP_LEVEL = 0.95
"""Level of the paired bootstrap intervals over seeds."""


def paired_bootstrap(a, b=None, level: float = BOOTSTRAP_LEVEL, n_boot: int = 10000, seed: int = 0) -> Estimate:
    """Mean of the paired differences d_i = a_i - b_i (``b`` omitted: d_i = a_i), i = seed, with a percentile
    bootstrap interval: seeds are resampled with replacement, each pair kept together (Efron & Tibshirani 1993,
    ch. 13), ``n_boot`` resamples from a fixed generator (deterministic). Non-finite pairs are dropped. One pair:
    the interval is the point itself (no seed spread to measure); none: NaN with an infinite interval. With n
    seeds the lower end is never below the smallest d_i, and equals it when n^-n > (1 - level) / 2 (n <= 3 at 95%).
    """
    d = np.asarray(a, dtype=np.float64).reshape(-1)
    if b is not None:
        other = np.asarray(b, dtype=np.float64).reshape(-1)
        if other.shape != d.shape:
            raise ValueError(f"paired_bootstrap: a and b must pair up (one value per seed), got {d.size} and "
                             f"{other.size} values")
        d = d - other
    d = d[np.isfinite(d)]
    if d.size == 0:
        return Estimate(math.nan, -math.inf, math.inf, 0, 0.0)
    value = float(d.mean())
    if d.size == 1:
        return Estimate(value, value, value, 1, 1.0)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(value, float(low), float(high), int(d.size), float(d.size))


def across_seeds(runs: Sequence[RunResult], estimate, level: float) -> Estimate:
    """An effect measured on each seed's run (``estimate(run) -> Estimate``): itself for one seed; for several,
    the mean over seeds with the bootstrap interval of :func:`paired_bootstrap` (seed-to-seed spread)."""
    ests = [estimate(r) for r in runs]
    if len(ests) == 1:
        return ests[0]
    return paired_bootstrap([e.value for e in ests], level=level)


def _num_seeds(results: Mapping[str, RunResult | Sequence[RunResult]]) -> int:
    """The most seeds any named run of a figure has."""
    return max((len(seed_runs(v)) for v in results.values()), default=1)


def seed_runs(value: RunResult | Sequence[RunResult]) -> list[RunResult]:
    """A run, or its seeds' runs, as a list."""
    return [value] if isinstance(value, RunResult) else list(value)


def _seed_note(results: Mapping[str, RunResult | Sequence[RunResult]]) -> str:
    counts = sorted({len(seed_runs(v)) for v in results.values()})
    if counts == [1]:
        return "one seed per run"
    per_run = ", ".join(f"{name} {len(seed_runs(v))}" for name, v in results.items())
    return (f"seeds per run: {per_run}; with several seeds each trend / difference is the mean of the per-seed values "
            f"with a {BOOTSTRAP_LEVEL:.0%} bootstrap interval over seeds")


# ---------------------------------------------------------------------------------------------- eigenspaces (B.2)
EIGEN_COUNT_EXPECTED = {"USPS MLP sigmoid": "up", "USPS MLP sigmoid, momentum": "up", "USPS MLP relu": "down",
                        "USPS CNN": "rise_relax", "FMNIST MLP relu": "down", "FMNIST MLP relu, momentum": "down",
                        "FMNIST CNN": "rise_relax"}
"""The paper's statement about the eigenvalue counts for each run of Figures B.2.2 / B.2.5 (experiments.EIGEN_RUNS)."""
COUNT_EXPECTATIONS = {
    "up": "n+ increases and n- decreases",
    "down": "n+ decreases",
    "rise_relax": "n+ rises quickly, then relaxes towards its start",
}


def _values(result: RunResult, metric: str) -> np.ndarray:
    return np.asarray(result.series(metric)[1], dtype=np.float64)


def rise_relax(values, smooth_fraction: float = 0.1) -> tuple[bool, bool]:
    """(rises, relaxes): the moving average (window n x ``smooth_fraction``) peaks above its start before the last
    quarter of training, and ends at most halfway between the start and the peak."""
    from chaosnb.plots import moving_average

    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size < 4:
        return False, False
    smooth = moving_average(x, max(1, int(x.size * smooth_fraction)))
    peak = int(np.argmax(smooth))
    start, top, end = smooth[0], smooth[peak], smooth[-1]
    rises = bool(top > start and peak < 0.75 * x.size)
    return rises, bool(rises and end <= start + 0.5 * (top - start))


def edge_count_figure(figure: str, claim: str, results: Mapping[str, RunResult | Sequence[RunResult]],
                      thresholds: Mapping[str, float]) -> Judgement:
    """Figure B.2.1: per run, the fraction of recorded spectra with an eigenvalue above 2/lr is at most
    ``above_fraction_max``."""
    checks = []
    for name, value in results.items():
        res, runs = seed_runs(value)[0], seed_runs(value)
        count = np.concatenate([_values(r, "n_above_2_over_lr") for r in runs])
        finite = count[np.isfinite(count)]
        frac = float(np.mean(finite > 0)) if finite.size else math.nan
        top = max(float(np.nanmax(_values(r, "eig_max"))) for r in runs) * res.config.lr / 2.0
        most = int(np.nanmax(count)) if finite.size else 0
        checks.append(Check(f"{name}: spectra with an eigenvalue above 2/lr <= {thresholds['above_fraction_max']:.0%}",
                            None if not finite.size else frac <= thresholds["above_fraction_max"],
                            f"{frac:.1%} of {finite.size} spectra, max count {most}, largest eigenvalue {top:.3g} x "
                            "2/lr"))
    lrs = sorted({seed_runs(v)[0].config.lr for v in results.values()})
    judgement = Judgement(figure, claim, combine(checks), tuple(checks),
                     "reproduced if every run stays below the edge in all but a small fraction of its spectra (all "
                     "seeds' spectra pooled)", "; ".join(c.measured for c in checks),
                     f"{_seed_note(results)}; learning rates {', '.join(f'{lr:g}' for lr in lrs)} (2/lr "
                     f"{', '.join(f'{2 / lr:g}' for lr in lrs)}, the paper's 2000 at lr 1e-3)")
    return dataclasses.replace(judgement, seeds=_num_seeds(results))


def count_trend_figure(figure: str, claim: str, results: Mapping[str, RunResult | Sequence[RunResult]], level: float,
                       expected: Mapping[str, str] = EIGEN_COUNT_EXPECTED) -> Judgement:
    """Figures B.2.2, B.2.5: per run, the eigenvalue counts move as the paper says for that run type (``expected``:
    "up", "down" or "rise_relax"); a trend counts only when its confidence interval excludes 0. A run given as
    several seeds' runs: the mean of the per-seed slopes with a bootstrap interval over seeds
    (:func:`across_seeds`); rise-and-relax must hold in every seed."""
    checks = []
    for name, value in results.items():
        kind, runs = expected[name], seed_runs(value)
        t_pos = across_seeds(runs, lambda r: trend_estimate(r, "n_pos", level), level)
        t_neg = across_seeds(runs, lambda r: trend_estimate(r, "n_neg", level), level)
        measured = f"trend n+ {t_pos.text()}, n- {t_neg.text()} per 1000 steps"
        if kind == "up":
            ok = t_pos.positive and t_neg.negative
        elif kind == "down":
            ok = t_pos.negative
        else:
            shapes = [rise_relax(_values(r, "n_pos")) for r in runs]
            rises, relaxes = all(a for a, _ in shapes), all(b for _, b in shapes)
            ok, measured = rises and relaxes, measured + f"; rises {rises}, relaxes {relaxes}"
        checks.append(Check(f"{name}: {COUNT_EXPECTATIONS[kind]}", bool(ok), measured))
    judgement = Judgement(figure, claim, combine(checks), tuple(checks),
                     f"per run, the paper's statement for that run type, with trends counted only when their "
                     f"{level:.0%} interval (corrected for autocorrelation) excludes 0",
                     "; ".join(f"{c.name.split(':')[0]}: {c.measured}" for c in checks), _seed_note(results))
    return dataclasses.replace(judgement, seeds=_num_seeds(results))


def mean_overlap_figure(figure: str, claim: str, results: Mapping[str, RunResult | Sequence[RunResult]],
                        level: float) -> Judgement:
    """Figures B.2.3, B.2.6: per run, the mean |cos| of the gradient with the positive eigenvectors exceeds that with
    the negative ones (paired per spectrum, interval above 0), and both decrease (slope intervals below 0)."""
    checks = []
    for name, value in results.items():
        runs = seed_runs(value)
        gap = across_seeds(runs, lambda r: mean_estimate(_values(r, "cos_pos_mean") - _values(r, "cos_neg_mean"),
                                                         level), level)
        checks.append(Check(f"{name}: positive overlap > negative", gap.positive, f"difference {gap.text()}"))
        for metric, label in (("cos_pos_mean", "positive"), ("cos_neg_mean", "negative")):
            slope = across_seeds(runs, lambda r, m=metric: trend_estimate(r, m, level), level)
            checks.append(Check(f"{name}: {label} overlap decreases", slope.negative,
                                f"trend {slope.text()} per 1000 steps"))
    judgement = Judgement(figure, claim, combine(checks), tuple(checks),
                     f"every (run, check) pair must hold for reproduced, some for partly; each difference and trend "
                     f"counts only when its {level:.0%} interval (corrected for autocorrelation) excludes 0",
                     "; ".join(f"{c.name}: {c.measured}" for c in checks), _seed_note(results))
    return dataclasses.replace(judgement, seeds=_num_seeds(results))


def _early_late_drop(res: RunResult, level: float) -> Estimate:
    """mean |cos(g, v_min)| over the first quarter of training minus over the second half."""
    low, steps, last = _values(res, "cos_min"), res.series("cos_min")[0], int(res.steps_done)
    return difference_estimate(low[(steps < max(last // 4, 1))], low[(steps >= last // 2)], level)


def extreme_overlap_figure(figure: str, claim: str, results: Mapping[str, RunResult | Sequence[RunResult]],
                           level: float) -> Judgement:
    """Figures B.2.4, B.2.7: per run, |cos| with the top eigenvector exceeds that with the most negative one
    (paired), the top overlap increases, and the most-negative overlap is lower in the second half of training than
    in its first quarter (each with a confidence interval excluding 0)."""
    checks = []
    for name, value in results.items():
        runs = seed_runs(value)
        gap = across_seeds(runs, lambda r: mean_estimate(_values(r, "cos_top") - _values(r, "cos_min"), level), level)
        slope = across_seeds(runs, lambda r: trend_estimate(r, "cos_top", level), level)
        drop = across_seeds(runs, lambda r: _early_late_drop(r, level), level)
        checks += [Check(f"{name}: top overlap > most negative", gap.positive, f"difference {gap.text()}"),
                   Check(f"{name}: top overlap increases", slope.positive, f"trend {slope.text()} per 1000 steps"),
                   Check(f"{name}: most-negative overlap drops early", drop.positive,
                         f"first quarter - second half {drop.text()}")]
    judgement = Judgement(figure, claim, combine(checks), tuple(checks),
                     f"every (run, check) pair must hold for reproduced, some for partly; each difference and trend "
                     f"counts only when its {level:.0%} interval (corrected for autocorrelation) excludes 0",
                     "; ".join(f"{c.name}: {c.measured}" for c in checks), _seed_note(results))
    return dataclasses.replace(judgement, seeds=_num_seeds(results))


# ---------------------------------------------------------------------------------------------- main text (Figs. 2, 3)
def pruning_start_figure(results: _PanelRuns | Sequence[_PanelRuns], window: int,
                         thresholds: Mapping[str, float]) -> Judgement:
    """Figure 2: the later chaos pruning starts, the better the final accuracy. Checks: each consecutive pair of
    SGD > latest start > ... > earliest start is ordered (final smoothed training accuracy), and the whole spread
    SGD - earliest start is at least ``acc_margin``. ``results``: one mapping of runs, or one per seed; with several
    seeds each difference is a paired bootstrap interval over seeds (:func:`paired_bootstrap`) and must clear its
    margin (0 for the order) with its lower end."""
    claim = ("the later chaos pruning is switched on, the better the final accuracy (paper at ~18k steps: SGD ~0.85 "
             "> from 10k ~0.78 > from 5k ~0.64 > from 2k ~0.45)")
    panels = seed_panels(results)
    first = panels[0]
    finals = [{n: tail_mean(r, "train_acc", window) for n, r in panel.items()} for panel in panels]
    starts = sorted((n for n in first if n != "sgd"), key=lambda n: first[n].config.prune_start, reverse=True)
    chain = ["sgd", *starts]
    label = {n: "SGD" if n == "sgd" else f"from step {first[n].config.prune_start}" for n in chain}
    seeds = "" if len(panels) == 1 else f", {len(panels)} seeds"
    mean = {n: _mean(f[n] for f in finals) for n in chain}
    checks = []
    for a, b in zip(chain, chain[1:], strict=False):
        diff = paired_bootstrap([f[a] for f in finals], [f[b] for f in finals])
        extra = f", difference {diff.text()}{seeds}" if seeds else ""
        checks.append(Check(f"{label[a]} > {label[b]}", bool(diff.low > 0), f"{mean[a]:.3f} vs {mean[b]:.3f}{extra}"))
    spread = paired_bootstrap([f["sgd"] for f in finals], [f[chain[-1]] for f in finals])
    checks.append(Check(f"SGD - earliest start >= {thresholds['acc_margin']:g}",
                        bool(spread.low >= thresholds["acc_margin"]),
                        f"{spread.value:+.3f}" + (f" {spread.text()}{seeds}" if seeds else "")))
    measured = "final smoothed mini-batch accuracy" + (f" (mean of {len(panels)} seeds): " if seeds else ": ") + \
        ", ".join(f"{label[n]} {mean[n]:.3f}" for n in chain)
    judgement = Judgement("Figure 2", claim, combine(checks), tuple(checks),
                     f"each consecutive pair ordered and the whole spread at least the margin (means over the last "
                     f"{window} steps)", measured, _seeds_limit(len(panels)))
    return dataclasses.replace(judgement, seeds=len(panels))


def _order_divergence_series(result: RunResult) -> tuple[np.ndarray, np.ndarray]:
    """(steps, mean positional divergence of the distances at each recorded step) over the strategies recorded."""
    from chaosnb.perturb import STRATEGIES, mean_positional_divergence

    steps, d = result.series("distance")
    out = np.full(len(steps), np.nan)
    for k in range(len(steps)):
        row = {s: float(d[k, i]) for i, s in enumerate(STRATEGIES) if math.isfinite(d[k, i])}
        if len(row) >= 2 and k > 0:
            out[k] = mean_positional_divergence(row)
    return steps, out


def strategy_order_figure(results: Mapping[str, RunResult]) -> Judgement:
    """Figure 3a: the distances are ordered max chaotic > chaotic > random > non-chaotic > max non-chaotic.

    The directions come from L_T at the final step T, where the order holds by construction to first order, so
    the order is judged along the curve before T: per run, the mean positional divergence (MPD) is 0 at the
    recorded step nearest T/2, and its mean over the recorded steps in [T/4, T) is below half the random-order
    expectation. The value at T is reported, not scored."""
    from chaosnb.perturb import STRATEGIES, random_order_expectation

    chance = random_order_expectation(len(STRATEGIES))
    checks, parts = [], []
    for name, res in results.items():
        steps, mpd = _order_divergence_series(res)
        big_t = int(steps[np.isfinite(mpd)][-1]) if np.isfinite(mpd).any() else 0
        before = np.isfinite(mpd) & (steps >= big_t / 4) & (steps < big_t)
        if before.sum() < 2:
            checks += [Check(f"{name}: order at T/2", None, "fewer than two recorded steps before T"),
                       Check(f"{name}: order along [T/4, T)", None, "fewer than two recorded steps before T")]
            continue
        mid = int(np.argmin(np.where(np.isfinite(mpd), np.abs(steps - big_t / 2), np.inf)))
        mean_before = float(np.mean(mpd[before]))
        checks += [Check(f"{name}: order at T/2", bool(mpd[mid] == 0), f"MPD {mpd[mid]:.3g} at step {steps[mid]}"),
                   Check(f"{name}: order along [T/4, T) beats chance", mean_before < chance / 2,
                         f"mean MPD {mean_before:.3g} over {int(before.sum())} steps vs random {chance:.3g}")]
        parts.append(f"{name}: MPD at T = {big_t}: {mpd[np.isfinite(mpd)][-1]:.3g} (by construction), at "
                     f"{steps[mid]}: {mpd[mid]:.3g}, mean over [T/4, T): {mean_before:.3g}")
    return Judgement("Figure 3a", "final distances are ordered maximal chaotic > chaotic > random > non-chaotic > "
                     "maximal non-chaotic, for the MLP on USPS and on Fashion-MNIST (eps 0.1)", combine(checks),
                     tuple(checks), "judged before the final step T whose L_T chose the directions (at T the order "
                     "holds by construction to first order)", "; ".join(parts) + f"; random order {chance:.3g}",
                     "one seed; one direction per strategy")


def centred_r2(t, d, eps: float, model: str = "quadratic") -> float:
    """Centred R^2 of the least-squares fit of y = d^2 - eps^2 by a t + b t^2 ("quadratic", Theorem A.10) or a t
    ("walk"): 1 - RSS / sum (y - mean y)^2, so a model must beat the constant, not only zero."""
    t = np.asarray(t, dtype=np.float64)
    y = np.asarray(d, dtype=np.float64) ** 2 - eps**2
    design = np.stack([t, t**2], axis=1) if model == "quadratic" else t[:, None]
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    rss = float(np.sum((y - design @ coef) ** 2))
    tss = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - rss / tss if tss > 0 else math.nan


def distance_fit_figure(result: RunResult, stage1: RunResult, eps: float, thresholds: Mapping[str, float],
                        fit_strategies: Sequence[str] = ("random", "chaotic")) -> Judgement:
    """Figure 3b: the distance follows sqrt(eps^2 + a t + b t^2) and lies between eps exp(t lambda_min(t)) and
    eps exp(t lambda_max(t)). Checks: centred R^2 of each fit >= ``r2_min`` (and the quadratic model beats the
    pure random walk a t); the measured distances of the fitted strategies lie inside the bounds at every tangent
    step; the maximal-chaotic distance at T equals the upper bound within a factor ``ratio_tol`` (first order)."""
    from chaosnb.analysis import lyapunov_distance_bounds
    from chaosnb.perturb import STRATEGIES

    steps, d = result.series("distance")
    b_steps, lower, upper = lyapunov_distance_bounds(stage1, eps)
    checks = []
    for s in fit_strategies:
        col = d[:, STRATEGIES.index(s)]
        ok = np.isfinite(col)
        if ok.sum() < 3:
            checks.append(Check(f"{s}: fit", None, "fewer than three finite distances"))
            continue
        r2, r2_walk = centred_r2(steps[ok], col[ok], eps), centred_r2(steps[ok], col[ok], eps, "walk")
        checks.append(Check(f"{s}: fit sqrt(eps^2 + a t + b t^2), centred R^2 >= {thresholds['r2_min']:g} and above "
                            "the random walk's", r2 >= thresholds["r2_min"] and r2 > r2_walk,
                            f"R^2 {r2:.3f} (random walk alone {r2_walk:.3f})"))
        at = [(t, col[np.searchsorted(steps, t)]) for t in b_steps if t in steps]
        inside = [bool(lo <= v <= up) for (t, v), lo, up in zip(at, lower, upper, strict=False) if math.isfinite(v)]
        checks.append(Check(f"{s}: inside the Lyapunov bounds at every tangent step", bool(inside) and all(inside),
                            f"{sum(inside)} of {len(inside)}"))
    big_t = int(b_steps[-1]) if len(b_steps) else -1
    top = d[np.searchsorted(steps, big_t), STRATEGIES.index("max_chaotic")] if big_t in steps else math.nan
    ratio = top / upper[-1] if len(b_steps) and upper[-1] > 0 else math.nan
    tol = thresholds["ratio_tol"]
    checks.append(Check(f"max chaotic distance at T = upper bound within x{tol:g}",
                        None if not math.isfinite(ratio) else 1 / tol <= ratio <= tol, f"ratio {ratio:.3g}"))
    return Judgement("Figure 3b", "the measured distance follows sqrt(eps^2 + a t + b t^2) and lies between the bounds "
                     "eps exp(t lambda_min(t)) and eps exp(t lambda_max(t)) from the extreme finite-time Lyapunov "
                     "exponents", combine(checks), tuple(checks),
                     "fit quality by the centred R^2 against a simpler model; the bounds hold for any direction to "
                     "first order, so the informative test is the maximal-chaotic distance meeting the upper bound",
                     "; ".join(f"{c.name}: {c.measured}" for c in checks),
                     "one seed; the lower bound uses the smallest resolved exponent (unresolved ones are censored)")


# --- proofs (A), toy (B.3), Lyapunov (C.1), subspaces (C.2)
def tolerance_check(name: str, value: float, tol: float) -> Check:
    """One numerical statement of a proof: holds when the (finite) deviation ``value`` is at most ``tol``."""
    value = float(value)
    return Check(name, bool(math.isfinite(value) and value <= tol), f"{value:.3g} (tolerance {tol:.3g})")


def theorem_figure(figure: str, claim: str, checks: Sequence[Check], measured: str, criterion: str,
                   limits: str = "") -> Judgement:
    """Verdict of a theorem of appendix A from its numerical checks (:func:`tolerance_check`), by :func:`combine`."""
    if not checks:
        raise ValueError(f"{figure}: no checks given; pass the tolerance checks that test the theorem")
    return Judgement(figure, claim, combine(checks), tuple(checks), criterion, measured, limits)


def _fraction_check(name: str, outcomes: Mapping[str, bool | None], fraction: float) -> Check:
    """A claim about a family of runs: holds when at least ``fraction`` of the runs where it can be decided pass;
    not testable when it can be decided in none."""
    decided = {n: v for n, v in outcomes.items() if v is not None}
    passed = sum(bool(v) for v in decided.values())
    measured = f"{passed}/{len(decided)} runs" + (f", {len(outcomes) - len(decided)} not decidable"
                                                   if len(decided) < len(outcomes) else "")
    if not decided:
        return Check(f"{name} (in >= {fraction:.0%} of the runs)", None, measured)
    return Check(f"{name} (in >= {fraction:.0%} of the runs)", passed >= fraction * len(decided), measured)


def slope_estimate(x, y, level: float = 0.95) -> Estimate:
    """Least-squares slope of y against x with a normal confidence interval from the residual variance (lag-1
    autocorrelation corrected as in :func:`trend_estimate`); an infinite interval with fewer than 3 points."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    mask = np.isfinite(x) & np.isfinite(y)
    x, y = x[mask], y[mask]
    if x.size < 2 or np.ptp(x) == 0:
        return Estimate(math.nan, -math.inf, math.inf, int(x.size), float(x.size))
    slope, intercept = np.polyfit(x, y, 1)
    if x.size < 3:
        return Estimate(float(slope), -math.inf, math.inf, int(x.size), float(x.size))
    residuals = y - (slope * x + intercept)
    n_eff = _effective_n(residuals)
    dof = max(n_eff - 2, 1.0)
    se = math.sqrt(float(residuals @ residuals) / dof / float(((x - x.mean()) ** 2).sum()) * x.size / n_eff)
    half = _z(level) * se
    return Estimate(float(slope), float(slope - half), float(slope + half), int(x.size), n_eff)


# ---------------------------------------------------------------------------------------------- B.3.1
def toy_order_figure(phases: Mapping[str, int | bool | None], seed_ordered: Sequence[bool], control_ordered: bool,
                     thresholds: Mapping[str, float]) -> Judgement:
    """Figure B.3.1 from :func:`chaosnb.toy.toy_phase_steps` outcomes: the path shows the stages in order
    (negative curvature carries the gradient, then positive, then negative again near the x-minimum); the same
    order holds for at least ``seed_fraction`` of the noise seeds; and the criterion discriminates: on the
    noise-free path along the ridge y = 0, where the surface gives the y-direction no gradient and the order must
    differ (negative curvature never takes over again), it must NOT find the order."""
    fraction = float(np.mean(seed_ordered)) if len(seed_ordered) else math.nan
    steps = ", ".join(f"{k} at step {phases.get(k)}" for k in ("negative_first", "positive", "negative_again"))
    checks = (Check("the path shows stage 1 -> 3 -> 4 in order", bool(phases["ordered"]), steps),
              Check(f"the order holds for >= {thresholds['seed_fraction']:.0%} of noise seeds",
                    None if not math.isfinite(fraction) else fraction >= thresholds["seed_fraction"],
                    f"{fraction:.0%} of {len(seed_ordered)} seeds"),
              Check("control: the criterion rejects the noise-free ridge path, where the order must differ",
                    not control_ordered, f"order found on the ridge path: {bool(control_ordered)}"))
    return Judgement("Figure B.3.1", "on z = -cos x - 0.05 y^2, SGD from near the maximum first descends along "
                     "negative curvature, passes the inflection into positive curvature, and near the x-minimum (a "
                     "saddle) the negative curvature along y takes over", combine(checks), checks,
                     "stages read from the share of ||g||^2 in negative-curvature directions (>= 90% / <= 10%); "
                     "reproduced when the order holds on the path, for most seeds, and the criterion rejects a path "
                     "where the order must differ", f"{steps}; same order for {fraction:.0%} of "
                     f"{len(seed_ordered)} noise seeds; ridge control ordered: {bool(control_ordered)}",
                     "the order is a property of the toy surface (Hessian diag(cos x, -0.1)): any descending path "
                     "from near x = pi with an offset in y shows it, so this checks the illustration, not networks "
                     "(Figure B.2.4 is the measured counterpart)")


# ---------------------------------------------------------------------------------------------- C.1
def _tangent_series(result: RunResult, metric: str) -> tuple[np.ndarray, np.ndarray]:
    if metric not in result.metrics or not len(result.metrics[metric]):
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    steps, values = result.series(metric)
    return np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64)


def log_stretch_growth(result: RunResult, level: float = 0.95) -> dict | None:
    """The un-normalised log-stretch S(t) = t lambda_max(t) = log sigma_max(Y_t) of a tangent-map run: its late
    growth rate (least-squares slope of S over the tangent steps t >= T/2, at least the last two) against the mean
    rate lambda_max(t_ref) = S(t_ref)/t_ref up to the late window's first step t_ref. A constant exponent gives
    ratio 1; convergence to the edge of chaos (S levelling off) gives ~0. None with fewer than 3 tangent steps."""
    steps, lam = _tangent_series(result, "ftle_max")
    ok = np.isfinite(lam) & (steps > 0)
    steps, lam = steps[ok], lam[ok]
    if steps.size < 3:
        return None
    big_t = int(steps[-1])
    late = np.nonzero(steps >= big_t / 2)[0]
    if late.size < 2 or late[0] == 0:
        late = np.arange(max(steps.size - 2, 1), steps.size)
    t_ref = int(steps[late[0]])
    s = steps * lam
    slope = slope_estimate(steps[late], s[late], level)
    ref = float(lam[late[0]])
    return {"t_ref": t_ref, "T": big_t, "ref_rate": ref, "late_rate": slope, "lam_first": float(lam[0]),
            "lam_last": float(lam[-1]), "t_first": int(steps[0])}


def lyapunov_exponent_figure(results: Mapping[str, RunResult], thresholds: Mapping[str, float]) -> Judgement:
    """Figure C.1.1: the maximal finite-time exponent drops quickly to about 0, the minimal one increases.

    Per run: lambda_max(T) < lambda_max(first tangent step) (weak: the 1/t normalisation makes a drop nearly
    automatic after an early burst); "to about 0": the late growth rate of log sigma_max(Y_t) (slope over
    t >= T/2, its upper confidence limit where there are >= 3 late points) is at most ``late_fraction`` x the mean
    rate before it (a constant exponent gives 1), which needs >= 3 tangent steps; the minimal resolved exponent
    increases, decided only where no exponent is unresolved at T (else the minimum is censored by the resolution,
    which rises like 1/t). Each claim must hold in ``run_fraction`` of the runs where it is decidable."""
    frac, late_fraction = thresholds["run_fraction"], thresholds["late_fraction"]
    drop, late, rise, parts, censored = {}, {}, {}, [], 0
    for name, res in results.items():
        steps, lam = _tangent_series(res, "ftle_max")
        finite = np.isfinite(lam)
        if finite.sum() < 2:
            continue
        lam0, lam1 = float(lam[finite][0]), float(lam[finite][-1])
        drop[name] = lam1 < lam0
        g = log_stretch_growth(res, thresholds.get("level", 0.95))
        if g is None:
            late[name] = None
            growth = "fewer than 3 tangent steps"
        else:
            bound = g["late_rate"].high if math.isfinite(g["late_rate"].high) else g["late_rate"].value
            late[name] = bool(bound <= late_fraction * g["ref_rate"]) if g["ref_rate"] > 0 else None
            rate = g["late_rate"]
            rate_text = rate.text() if math.isfinite(rate.low) else f"{rate.value:+.3g} (2 points, no interval)"
            growth = f"late rate of log sigma_max {rate_text} vs {g['ref_rate']:.3g} before t = {g['t_ref']}"
        _, fmin = _tangent_series(res, "ftle_min")
        _, unresolved = _tangent_series(res, "ftle_unresolved")
        fin = fmin[np.isfinite(fmin)]
        is_censored = bool(unresolved.size and unresolved[-1] > 0)
        censored += is_censored
        rise[name] = None if is_censored or fin.size < 2 else bool(fin[-1] > fin[0])
        parts.append(f"{name}: max {lam0:.4f} -> {lam1:.4f}, {growth}"
                     + (f", min censored ({int(unresolved[-1])} unresolved)" if is_censored else ""))
    checks = (_fraction_check("max exponent lower at the last tangent step than at the first", drop, frac),
              _fraction_check(f"late growth rate of log sigma_max(Y_t) <= {late_fraction:g} x the earlier mean rate "
                              "(exponent converging to ~0)", late, frac),
              _fraction_check("min resolved exponent increases (uncensored runs)", rise, frac))
    return Judgement("Figure C.1.1", "the maximal exponent drops quickly to about 0 (chaotic start, then edge of "
                     "chaos); the minimal exponent increases; it is occasionally -inf", combine(checks), checks,
                     "each claim per run, counted over the runs where it is decidable; 'to about 0' by the growth of "
                     "the un-normalised log-stretch t lambda_max(t), which a constant exponent would keep linear",
                     "; ".join(parts) or "no run with two tangent steps",
                     f"one seed per run; {censored} runs have unresolved (-inf) exponents at their last tangent step, "
                     "so their minimum is censored and not scored")


def chaotic_count_figure(results: Mapping[str, RunResult], models: Mapping[str, str],
                         thresholds: Mapping[str, float]) -> Judgement:
    """Figure C.1.2: the MLP chaotic count drops quickly then stays almost constant; the CNN count drops more slowly.

    Per run, with the count censored: the true dimension lies in [chaotic_dim, chaotic_dim + ftle_uncertain], so a
    fall counts only when the upper end at the last tangent step is below the count at the first, and, where there
    are >= 4 tangent steps, Kendall's trend test finds a fall at ``level`` (:func:`kendall_fall`; a rank test, so a
    quick drop then a plateau counts; the Theil-Sen slope against log t with its interval is reported as the effect
    size). Checks: the
    count falls in ``run_fraction`` of the MLP runs and of the CNN runs; the MLP count falls faster (mean relative
    change up to the MLP runs' common last tangent step, lower bounds) than the CNN's."""
    frac, level = thresholds["run_fraction"], thresholds.get("level", 0.95)
    falls: dict[str, dict[str, bool]] = {"mlp": {}, "cnn": {}}
    info, n_censored = {}, 0
    for name, res in results.items():
        steps, dims = _tangent_series(res, "chaotic_dim")
        if steps.size < 2 or models[name] not in falls:
            continue
        _, unc = _tangent_series(res, "ftle_uncertain")
        unc = unc if unc.size == dims.size else np.zeros_like(dims)
        n_censored += bool(np.any(unc > 0))
        robust = bool(dims[-1] + unc[-1] < dims[0])
        slope = theil_sen_estimate(np.log(np.maximum(steps, 1)), dims, level)
        tau, p = kendall_fall(steps, dims)
        falls[models[name]][name] = robust and (p < 1 - level if steps.size >= 4 else True)
        info[name] = (steps, dims, unc, f"Theil-Sen slope per e-fold of t {slope.text()}, Kendall tau {tau:+.2f} "
                      f"(one-sided p {p:.2g})" if steps.size >= 4 else f"{steps.size} tangent steps, no trend test")
    mlp_last = [int(info[n][0][-1]) for n in falls["mlp"]]
    horizon = min(mlp_last) if mlp_last else 0
    speed = {}
    for model in falls:
        changes = []
        for n in falls[model]:
            steps, dims, _, _ = info[n]
            i = np.nonzero(steps <= horizon)[0]
            if i.size and i[-1] > 0 and dims[0] > 0:
                changes.append((dims[i[-1]] - dims[0]) / dims[0])
        speed[model] = float(np.mean(changes)) if changes else math.nan
    faster = (None if not all(math.isfinite(v) for v in speed.values())
              else bool(speed["mlp"] < 0 and speed["mlp"] < speed["cnn"]))
    checks = (_fraction_check("MLP chaotic count falls beyond its censoring (and by a trend test)", falls["mlp"],
                              frac),
              _fraction_check("CNN chaotic count falls beyond its censoring (and by a trend test)", falls["cnn"],
                              frac),
              Check(f"MLP count falls faster than the CNN's up to t = {horizon}", faster,
                    f"mean relative change MLP {speed['mlp']:+.1%}, CNN {speed['cnn']:+.1%}"))
    measured = "; ".join(f"{n}: {int(d[0])} -> {int(d[-1])} (+{int(u[-1])} uncertain), {trend}"
                         for n, (_, d, u, trend) in info.items())
    return Judgement("Figure C.1.2", "the MLP chaotic count drops quickly, then stays almost constant; the CNN count "
                     "drops more slowly; non-chaotic count = D - chaotic count", combine(checks), checks,
                     f"per run a censoring-robust fall and, where there are >= 4 tangent steps, a significant fall by "
                     f"Kendall's trend test (one-sided, level {level:.0%}); each family must fall and the MLP faster",
                     measured or "no run with two tangent steps",
                     f"one seed per run; {n_censored} runs have uncertain exponents (the count is a lower bound "
                     "there); 'stays almost constant' is not scored with a few tangent steps per run")


def theil_sen_estimate(x, y, level: float = 0.95) -> Estimate:
    """Theil-Sen slope of y against x (median of pairwise slopes) with its rank-based confidence interval (Sen 1968,
    from the distribution of Kendall's tau): robust to the curve's shape, so a quick drop followed by a plateau has
    an interval below 0. An infinite interval with fewer than 3 points."""
    from scipy.stats import theilslopes

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    mask = np.isfinite(x) & np.isfinite(y)
    x, y = x[mask], y[mask]
    if x.size < 3 or np.ptp(x) == 0:
        return Estimate(math.nan, -math.inf, math.inf, int(x.size), float(x.size))
    slope, _, low, high = theilslopes(y, x, alpha=level)
    return Estimate(float(slope), float(low), float(high), int(x.size), float(x.size))


def kendall_fall(steps, values) -> tuple[float, float]:
    """Kendall's tau between step and value and the one-sided p-value of the test for a fall (Mann-Kendall): a rank
    test, so a quick drop followed by a flat plateau (ties) is still a significant fall. (nan, 1) for < 3 points."""
    from scipy.stats import kendalltau

    values = np.asarray(values, dtype=np.float64)
    if values.size < 3 or np.ptp(values) == 0:
        return math.nan, 1.0
    res = kendalltau(np.asarray(steps, dtype=np.float64), values, alternative="less")
    return float(res.statistic), float(res.pvalue)


def _count_reaches_zero(steps: np.ndarray, non: np.ndarray, uncertain: np.ndarray) -> tuple[bool | None, str]:
    """(passed, measured) of C.1.3's "the non-chaotic count reaches 0" (rules in pruning_lyapunov_figure)."""
    if non.size and np.any(non == 0):
        return True, f"0 at step {int(steps[np.argmax(non == 0)])}"
    series = " -> ".join(f"{int(v)} (t = {int(t)})" for t, v in zip(steps, non, strict=True))
    if non.size and uncertain.size == non.size and uncertain[-1] >= non[-1]:
        return None, (f"{int(non[-1])} at the last tangent step {int(steps[-1])}, all of them uncertain (exponents "
                      f"within their error estimates of 0): the true count lies in [0, {int(non[-1])}], below the "
                      f"resolution; counts {series}")
    if non.size < 2:
        return None, "fewer than two tangent steps"
    if not non[-1] < non[0]:
        return False, f"does not fall: {int(non[0])} -> {int(non[-1])}"
    if not bool(np.all(np.diff(non) <= 0)):
        return None, f"falls, but not monotonically: {series}; no rate extrapolated, horizon too short"
    rate = (non[0] - non[-1]) / (steps[-1] - steps[0])
    return None, (f"{int(non[-1])} at the last tangent step {int(steps[-1])}; at the measured rate {rate:.3g}/step "
                  f"it would reach 0 near step {int(steps[-1] + non[-1] / rate)}: horizon too short")


def pruning_lyapunov_figure(results: Mapping[str, RunResult]) -> Judgement:
    """Figure C.1.3 from the runs ``sgd``, ``chaotic``, ``neg``, ``pos`` (momentum 0.9, tangent map on).

    Checks: at the last tangent step shared by SGD and both CGD runs, chaotic- and negative-pruned CGD have a
    smaller maximal exponent than SGD; the positive-pruned run's non-chaotic count falls and ends below every other
    run's; it reaches 0. The last is decided from the run: it holds when a tangent step shows 0, fails when the
    count does not fall at all, and is not testable when every remaining non-chaotic exponent is uncertain (within
    its error estimate of 0: the true count lies in [0, count], below the resolution) or when the count falls but
    has not reached 0 by the run's last tangent step (the horizon is too short; a rate to 0 is extrapolated only
    from a monotone fall)."""
    missing = {"sgd", "chaotic", "neg", "pos"} - set(results)
    if missing:
        raise ValueError(f"Figure C.1.3 needs the runs sgd, chaotic, neg and pos; missing {sorted(missing)}")
    series = {n: _tangent_series(r, "ftle_max") for n, r in results.items()}
    common = set.intersection(*(set(series[n][0][np.isfinite(series[n][1])].tolist()) for n in ("sgd", "chaotic",
                                                                                                  "neg")))
    if common:
        t = max(common)
        at = {n: float(series[n][1][series[n][0] == t][0]) for n in ("sgd", "chaotic", "neg")}
        damped = Check("chaotic and negative CGD: smaller max exponent than SGD", at["chaotic"] < at["sgd"]
                       and at["neg"] < at["sgd"], f"at t = {t}: " + ", ".join(f"{n} {v:.4f}" for n, v in at.items()))
    else:
        damped = Check("chaotic and negative CGD: smaller max exponent than SGD", None, "no shared tangent step")
    steps, non = _tangent_series(results["pos"], "non_chaotic_dim")
    ends = (_tangent_series(results[n], "non_chaotic_dim")[1] for n in ("sgd", "chaotic", "neg"))
    others = [float(end[-1]) for end in ends if end.size]
    if non.size >= 2:
        lowest = Check("positive pruning: non-chaotic count falls and ends lowest of the four runs",
                       bool(non[-1] < non[0] and all(non[-1] < o for o in others)),
                       f"{int(non[0])} -> {int(non[-1])}; others end at {', '.join(str(int(o)) for o in others)}")
    else:
        lowest = Check("positive pruning: non-chaotic count falls and ends lowest of the four runs", None,
                       f"{non.size} tangent step(s) recorded")
    zero = Check("positive pruning: non-chaotic count reaches 0",
                 *_count_reaches_zero(steps, non, _tangent_series(results["pos"], "ftle_uncertain")[1]))
    checks = (damped, lowest, zero)
    pos = results["pos"]
    return Judgement("Figure C.1.3", "with momentum, chaotic/negative CGD quickly dampens the max exponent to ~0, SGD "
                     "more slowly; positive pruning drives the non-chaotic count to 0 and training becomes unstable",
                     combine(checks), checks, "the damping at the last shared tangent step; the positive-pruned "
                     "count's fall, and its reaching 0 only where the run's horizon allows it",
                     "; ".join(c.measured for c in checks) + "; positive pruning "
                     + (f"diverged at step {pos.diverged_at}" if pos.diverged else "did not diverge"),
                     "one seed per run; a few tangent steps per run" + ("; whether the positive-pruned count reaches "
                                                                       "0 is not testable at this horizon and "
                                                                       "resolution" if zero.passed is None else ""))


# ---------------------------------------------------------------------------------------------- C.2.1
def random_overlap_variance(a, b, n):
    """Variance of overlap(V, W) = Tr(P_V P_W) / min(a, b) for independent uniformly random subspaces of dims a, b
    in R^n: Var Tr(P_V P_W) = 2 a b (n - a)(n - b) / (n^2 (n - 1)(n + 2)) (for a = b = 1 the variance of a
    Beta(1/2, (n - 1)/2) squared cosine)."""
    a, b, n = (np.asarray(v, dtype=np.float64) for v in (a, b, n))
    if np.any(n < 2) or np.any(a < 1) or np.any(b < 1) or np.any(a > n) or np.any(b > n):
        raise ValueError("random_overlap_variance needs 1 <= a, b <= n and n >= 2")
    out = 2 * a * b * (n - a) * (n - b) / (n**2 * (n - 1) * (n + 2)) / np.minimum(a, b) ** 2
    return float(out) if out.ndim == 0 else out


def random_overlap_quantile(a: int, b: int, n: int, q: float) -> float:
    """The q-quantile of the random overlap, from the Beta distribution with its exact mean max(a, b)/n and
    variance (:func:`random_overlap_variance`); exact for a = b = 1. 1.0 when it is deterministic (a or b = n)."""
    from scipy.stats import beta

    m = float(max(a, b) / n)
    v = float(random_overlap_variance(a, b, n))
    if v <= 0 or m >= 1:
        return 1.0
    common = m * (1 - m) / v - 1
    return float(beta.ppf(q, m * common, (1 - m) * common))


def _beyond_random(c: Mapping, alpha: float) -> tuple[bool | None, float, float]:
    """(overlap at the last step above the random (1 - alpha)-quantile, that quantile, z-score) for one curve."""
    o, d0, dt, n = float(c["overlap"][-1]), int(c["d0"]), int(c["dims"][-1]), int(c["n"])
    if not math.isfinite(o) or min(d0, dt) < 1 or max(d0, dt) >= n:
        return None, math.nan, math.nan
    quantile = random_overlap_quantile(d0, dt, n, 1 - alpha)
    z = (o - max(d0, dt) / n) / math.sqrt(random_overlap_variance(d0, dt, n))
    return o > quantile, quantile, z


def subspace_overlap_figure(curves: Mapping[str, Mapping], later: Mapping[str, Mapping],
                            thresholds: Mapping[str, float]) -> Judgement:
    """Figure C.2.1 from :func:`chaosnb.analysis.chaotic_overlap_with_baseline` curves per run, from the first
    snapshot (``curves``) and a later one (``later``, the stand-in for T_conv).

    Checks, each over ``run_fraction`` of the runs where it is decidable: from t0 = first, the final overlap lies
    above the (1 - ``alpha``)-quantile of the overlap of random subspaces of the same dimensions (mean max(a, b)/n,
    spread :func:`random_overlap_variance`); the decline slows down (runs with >= 3 points: the fall over the second
    half of the points is at most that over the first); from the later t0 the final overlap is above the random
    quantile too and higher than from t0 = first at the same step (closer to one)."""
    alpha, frac = thresholds["alpha"], thresholds["run_fraction"]
    above, slows, late_above, late_higher, parts = {}, {}, {}, {}, []
    for name, c in curves.items():
        ok, quantile, z = _beyond_random(c, alpha)
        above[name] = ok
        ov = np.asarray(c["overlap"], dtype=np.float64)
        if ov.size >= 3 and np.isfinite(ov).all():
            half = ov.size // 2
            slows[name] = bool(ov[half] - ov[-1] <= ov[0] - ov[half])
        parts.append(f"{name}: {ov[-1]:.3f} vs random {max(c['d0'], c['dims'][-1]) / c['n']:.3f} "
                     f"({1 - alpha:.0%} quantile {quantile:.3f}, z {z:.1f})")
    for name, c in later.items():
        late_above[name] = _beyond_random(c, alpha)[0]
        if name in curves and np.isfinite(c["overlap"][-1]) and np.isfinite(curves[name]["overlap"][-1]):
            late_higher[name] = bool(c["overlap"][-1] > curves[name]["overlap"][-1])
    checks = (_fraction_check(f"from t0 = first: final overlap above the random {1 - alpha:.0%} quantile", above, frac),
              _fraction_check("from t0 = first: the decline slows down", slows, frac),
              _fraction_check(f"from the later t0: final overlap above the random {1 - alpha:.0%} quantile",
                              late_above, frac),
              _fraction_check("from the later t0: final overlap higher than from t0 = first", late_higher, frac))
    return Judgement("Figure C.2.1", "the similarity of V_chaotic(t0) and V_chaotic(t) stabilises above the random "
                     "baseline for an early t0 and stays close to one for t0 = T_conv", combine(checks), checks,
                     f"significance against the overlap distribution of random subspaces of the same dimensions "
                     f"(one-sided, alpha {alpha:g}); each check in at least {frac:.0%} of the runs",
                     "; ".join(parts) or "no overlap curve",
                     "one seed per run; the quick runs do not converge, so a mid-training snapshot replaces T_conv; "
                     "'close to one' is judged relative to the early t0, not by an absolute level")
# --- perturbations (C.3-C.5)
# A "seed" of a perturbation ensemble: the stage-1 run (the tangent map) is the expensive part and is not repeated
# here, so the replicates are what varies cheaply inside one figure: the five strategies (paired between two runs,
# since every run draws them by the same rule) for C.3, and the reference configurations for C.4.1 (the paper's
# caption pools "all experiments"). Intervals are paired bootstrap intervals over those replicates.
def bootstrap_mean(diffs, level: float = 0.95, n_boot: int = 4000, seed: int = 0) -> Estimate:
    """Mean of paired differences (pairs: strategies, configurations) with a percentile bootstrap interval
    (resampling the pairs, ``n_boot`` times, a fixed generator): an effect counts only when the interval excludes 0.
    Non-finite pairs are dropped; with fewer than two pairs the interval is (-inf, inf) (unlike
    :func:`paired_bootstrap`'s single seed, one pair here is not a measurement of spread)."""
    x = np.asarray(diffs, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size < 2:
        value = float(x.mean()) if x.size else math.nan
        return Estimate(value, -math.inf, math.inf, int(x.size), float(x.size))
    return paired_bootstrap(x, level=level, n_boot=n_boot, seed=seed)


def _log_growth(result: RunResult, step: int | None = None) -> dict[str, float]:
    """{strategy: log(d_s(step) / eps)} over the strategies with a positive finite distance (default: last step)."""
    from chaosnb.analysis import perturbation_distances_at

    eps = result.config.perturb_eps
    return {s: math.log(v / eps) for s, v in perturbation_distances_at(result, step).items() if v > 0}


def _paired_log_ratio(a: Mapping[str, float], b: Mapping[str, float], level: float) -> Estimate:
    """Paired (by strategy) difference of log growth a - b: the log of the ratio of the growth factors."""
    common = [s for s in a if s in b]
    return bootstrap_mean([a[s] - b[s] for s in common], level)


def order_along_curve(result: RunResult) -> tuple[float, float, int]:
    """(MPD at the last recorded step T, mean MPD over the recorded steps in [T/4, T), how many such steps) of a
    perturbation run: the directions come from L_T, so at T the order holds by construction to first order and
    only the order before T tests the claim. NaN when fewer than two steps lie in [T/4, T)."""
    steps, mpd = _order_divergence_series(result)
    finite = np.isfinite(mpd)
    if not finite.any():
        return math.nan, math.nan, 0
    big_t = int(steps[finite][-1])
    before = finite & (steps >= big_t / 4) & (steps < big_t)
    along = float(np.mean(mpd[before])) if before.sum() >= 2 else math.nan
    return float(mpd[finite][-1]), along, int(before.sum())


def _common_step(a: RunResult, b: RunResult) -> int:
    return int(min(a.series("distance")[0][-1], b.series("distance")[0][-1]))


def distance_growth_figure(results: Mapping[str, RunResult], equal_lr: Mapping[str, tuple[RunResult, RunResult]],
                           thresholds: Mapping[str, float], datasets: Sequence[str] = ("USPS", "FMNIST")) -> Judgement:
    """Figure C.3.1: the CNN diverges more than the MLP, momentum more than none, datasets differ little.

    ``results`` holds the runs "<ds> CNN", "<ds> CNN, momentum", "<ds> MLP, momentum" (and optionally "<ds> MLP",
    Figure 3a's run, for the MLP's momentum check) for each dataset label;
    ``equal_lr`` maps a dataset label to (CNN, MLP) perturbation runs (with momentum) at the SAME learning rate
    (the profile's runs give the CNN 3x the MLP's lr, which alone makes it separate faster per step), or to a list
    of such pairs, one per seed. Growth of one strategy = log(d_s(t) / eps); two runs are compared by the mean over
    strategies of the paired log ratio, with a paired bootstrap interval (``level``) over the strategies (one
    pair) or over the seeds' means (several pairs). Checks: per dataset, CNN > MLP at equal lr
    at their common step (interval above 0); per dataset, CNN with momentum > without (final step, interval
    above 0); per dataset and configuration, USPS / FMNIST growth ratio within [1/``ds_ratio_max``,
    ``ds_ratio_max``] ("datasets differ little"); the order of the strategies along the curve (mean positional
    divergence over [T/4, T)) below half the random-order expectation in every run. The momentum check is made
    per model whose two runs are given."""
    from chaosnb.perturb import STRATEGIES, random_order_expectation

    level, ds_max = thresholds["level"], thresholds["ds_ratio_max"]
    chance = random_order_expectation(len(STRATEGIES))
    checks, parts = [], []
    for ds in datasets:
        pairs = equal_lr.get(ds)
        label = f"{ds}: CNN > MLP at equal lr (momentum)"
        if not pairs:
            checks.append(Check(label, None, "no equal-lr runs at this profile"))
        else:
            pairs = [pairs] if isinstance(pairs[0], RunResult) else list(pairs)
            h = min(_common_step(cnn, mlp) for cnn, mlp in pairs)
            per_seed = [_paired_log_ratio(_log_growth(cnn, h), _log_growth(mlp, h), level) for cnn, mlp in pairs]
            est = per_seed[0] if len(pairs) == 1 else bootstrap_mean([e.value for e in per_seed], level)
            over = "the strategies" if len(pairs) == 1 else f"{len(pairs)} seeds"
            checks.append(Check(label, None if est.n < 2 else est.positive,
                                f"log(CNN / MLP growth) at step {h}, lr {pairs[0][0].config.lr:g}: {est.text()} over "
                                f"{over} (ratio {math.exp(est.value):.3g})"))
        for model in ("CNN", "MLP"):  # the MLP pair only when both runs are given (Figure 3a's run is without)
            if f"{ds} {model}" not in results or f"{ds} {model}, momentum" not in results:
                continue
            est = _paired_log_ratio(_log_growth(results[f"{ds} {model}, momentum"]),
                                    _log_growth(results[f"{ds} {model}"]), level)
            checks.append(Check(f"{ds}: {model} with momentum > without", None if est.n < 2 else est.positive,
                                f"log(growth ratio) {est.text()} (ratio {math.exp(est.value):.3g})"))
    ds_ratios = {}
    for suffix in ("CNN", "CNN, momentum", "MLP", "MLP, momentum"):
        runs = [results.get(f"{ds} {suffix}") for ds in datasets[:2]]
        if len(datasets) < 2 or any(r is None for r in runs):
            continue
        a, b = (_log_growth(r) for r in runs)
        common = [s for s in a if s in b]
        ds_ratios[suffix] = math.exp(np.mean([a[s] - b[s] for s in common])) if common else math.nan
    if ds_ratios:
        finite = [r for r in ds_ratios.values() if math.isfinite(r)]
        checks.append(Check(f"datasets differ little: {datasets[0]} / {datasets[1]} growth within x{ds_max:g}",
                            None if not finite else all(1 / ds_max <= r <= ds_max for r in finite),
                            ", ".join(f"{k} {v:.3g}" for k, v in ds_ratios.items())))
    along = {name: order_along_curve(res) for name, res in results.items()}
    decided = {n: v[1] for n, v in along.items() if math.isfinite(v[1])}
    checks.append(Check(f"order along the curve beats chance in every run (mean MPD over [T/4, T) < {chance / 2:.2g})",
                        None if not decided else all(v < chance / 2 for v in decided.values()),
                        ", ".join(f"{n} {v:.2g}" for n, v in decided.items()) or "fewer than two steps before T"))
    parts.append("MPD at T (by construction): " + ", ".join(f"{n} {v[0]:.2g}" for n, v in along.items()))
    return Judgement("Figure C.3.1", "at eps 0.1 datasets differ little; the CNN shows more global chaos than the "
                     "MLP; runs with momentum diverge more than without", combine(checks), tuple(checks),
                     f"growth compared by paired log ratios over the five strategies ({level:.0%} bootstrap "
                     "interval must exclude 0); CNN vs MLP at equal learning rate and equal step; order judged "
                     "before the final step whose L_T chose the directions",
                     "; ".join(f"{c.name}: {c.measured}" for c in checks) + "; " + "; ".join(parts),
                     "one stage-1 run per configuration except the equal-lr pairs (seeds as given); elsewhere the "
                     "replicates are the five strategies, three of them random draws")


def _paired_accuracy(result: RunResult, metric: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(steps, differences of each perturbed model's ``metric`` to the unperturbed one (n, k), model names)."""
    from chaosnb.analysis import _perturbed_names

    steps, values = result.series(metric)
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    return np.asarray(steps), values[:, 1:] - values[:, :1], _perturbed_names(result, values.shape[1] - 1)


def validation_gap_figure(results: Mapping[str, RunResult], thresholds: Mapping[str, float]) -> Judgement:
    """Figure C.3.2: at eps 0.1 the perturbed models' accuracy does not differ significantly from the original's.

    Judged on VALIDATION accuracy (the runs' evaluations on the test split, after step 0): per run, the mean over
    the evaluations of each strategy's paired difference to the unperturbed model; the check holds when the
    paired bootstrap interval (over the strategies) of the mean difference lies inside +-``acc_equiv`` (an
    equivalence test: "no difference" must be shown, not just not rejected). Not testable without an evaluation
    after step 0."""
    level, margin = thresholds["level"], thresholds["acc_equiv"]
    checks = []
    for name, res in results.items():
        label = f"{name}: validation accuracy within +-{margin:g} of the original's"
        try:
            steps, diff, _ = _paired_accuracy(res, "val_acc")
        except KeyError:
            checks.append(Check(label, None, "no validation accuracy recorded"))
            continue
        later = steps > 0
        if not later.any():
            checks.append(Check(label, None, "no evaluation after step 0 at this profile"))
            continue
        per_strategy = np.nanmean(diff[later], axis=0)
        est = bootstrap_mean(per_strategy, level)
        largest = float(np.nanmax(np.abs(diff[later]))) if np.isfinite(diff[later]).any() else math.nan
        checks.append(Check(label, None if est.n < 2 else (-margin <= est.low and est.high <= margin),
                            f"mean difference {est.text()} over {int(later.sum())} evaluations, largest |difference| "
                            f"{largest:.3g}"))
    return Judgement("Figure C.3.2", "at eps 0.1 the accuracy of the perturbed models shows no significant difference "
                     "from the original model's", combine(checks), tuple(checks),
                     f"equivalence on validation accuracy: the {level:.0%} paired bootstrap interval (over strategies) "
                     f"of the mean difference must lie within +-{margin:g}",
                     "; ".join(f"{c.name.split(':')[0]}: {c.measured}" for c in checks),
                     "one stage-1 run per configuration; the test split is evaluated every eval_every steps")


def _large_eps_run(name, col, models, level, early_fraction, worst_panel, worse, chaotic, early, worst) -> None:
    """The estimates of one run of Figure C.3.3, written into the dicts of :func:`large_eps_accuracy_figure`."""
    n_early = max(2, int(round(early_fraction * len(next(iter(col.values()))))))
    others = [m for m in models if m != "chaotic"]
    worse[name] = mean_estimate(np.nanmean(np.stack([col[m] for m in others]), axis=0), level)
    if "chaotic" in col:
        chaotic[name] = mean_estimate(col["chaotic"], level)
        early[name] = mean_estimate(col["chaotic"][:n_early], level)
    if worst_panel and "max_non_chaotic" in col:
        rivals = {m: col["max_non_chaotic"] - col[m] for m in models if m != "max_non_chaotic"}
        rivals["original"] = col["max_non_chaotic"]
        nearest = max(rivals, key=lambda m: float(np.nanmean(rivals[m])))  # the next-worst model
        worst[name] = (nearest, mean_estimate(rivals[nearest], level))


def large_eps_accuracy_figure(results: Mapping[str, RunResult], thresholds: Mapping[str, float],
                              worst_panels: Sequence[str] | None = None, early_fraction: float = 0.25) -> Judgement:
    """Figure C.3.3: at eps 10 the perturbed models are generally slightly worse, except the chaotic one, which
    consistently beats the original (especially early); maximal non-chaotic is the worst (panels (a)-(c)).

    Per step, mini-batch accuracy differences to the original are paired (same batch); each mean carries an
    AR(1)-corrected interval (``level``). Checks: the mean over the four other strategies is below 0 (interval)
    in at least all but one run; the chaotic model is above the original (interval) in every run, over the whole
    run and over its first ``early_fraction``; in ``worst_panels`` (default: all runs but the last), maximal
    non-chaotic is below every other model (its paired difference to the next-worst one has an interval below 0)."""
    level = thresholds["level"]
    names = list(results)
    worst_panels = names[:-1] if worst_panels is None else list(worst_panels)
    worse, chaotic, early, worst = {}, {}, {}, {}
    for name, res in results.items():
        _, diff, models = _paired_accuracy(res, "train_acc")
        col = {m: diff[:, j] for j, m in enumerate(models)}
        with np.errstate(invalid="ignore", divide="ignore"):  # constant stretches: AR(1) correlation undefined
            _large_eps_run(name, col, models, level, early_fraction, name in worst_panels, worse, chaotic, early,
                           worst)
    n_worse = sum(e.negative for e in worse.values())
    checks = [Check(f"the other strategies are worse on average in >= {len(names) - 1} of {len(names)} runs",
                    n_worse >= len(names) - 1, f"{n_worse} runs: " + ", ".join(f"{n} {e.text()}"
                                                                              for n, e in worse.items())),
              Check("the chaotic model beats the original in every run", None if not chaotic else
                    len(chaotic) == len(names) and all(e.positive for e in chaotic.values()),
                    ", ".join(f"{n} {e.text()}" for n, e in chaotic.items()) or "no chaotic direction"),
              Check(f"... and over the first {early_fraction:.0%} of every run", None if not early else
                    len(early) == len(names) and all(e.positive for e in early.values()),
                    ", ".join(f"{n} {e.text()}" for n, e in early.items()) or "no chaotic direction"),
              Check("maximal non-chaotic is the worst model in " + ", ".join(worst_panels),
                    None if not worst else len(worst) == len(worst_panels) and all(e.negative
                                                                                   for _, e in worst.values()),
                    ", ".join(f"{n} vs {m} {e.text()}" for n, (m, e) in worst.items()))]
    return Judgement("Figure C.3.3", "at eps 10 the perturbed models are generally slightly worse, except the "
                     "chaotically perturbed one, which consistently outperforms the original (especially early); "
                     "maximal non-chaotic is the worst (except panel (d))", combine(checks), tuple(checks),
                     f"paired per-step mini-batch accuracy differences; a difference counts only when its {level:.0%} "
                     "interval (corrected for autocorrelation) excludes 0",
                     "; ".join(f"{c.name}: {c.measured}" for c in checks),
                     "one stage-1 run per configuration; eps 10 is far outside the linear regime")


def eps_order_figure(sweeps: Mapping[str, Mapping[float, RunResult]], eps_main: float,
                     thresholds: Mapping[str, float]) -> Judgement:
    """Figure C.4.1: eps = ``eps_main`` gives the expected order; smaller and larger eps become more random.

    ``sweeps`` maps a reference configuration to {eps: perturbation run}; the configurations are the replicates
    (the caption pools all experiments). The order of a run is its mean positional divergence (MPD) over the
    recorded steps in [T/4, T) (at T it holds by construction to first order). Checks, with paired bootstrap
    intervals over the configurations that have the eps compared (a finite order at each): the mean MPD at
    ``eps_main`` lies below half the random-order expectation (upper end of its interval); the smallest and the
    largest eps are each more random than ``eps_main`` by at least ``mpd_margin`` (0.2 = one adjacent swap of
    five; the interval's lower end)."""
    from chaosnb.perturb import STRATEGIES, random_order_expectation

    level, margin = thresholds["level"], thresholds["mpd_margin"]
    chance = random_order_expectation(len(STRATEGIES))
    eps_all = sorted({e for sweep in sweeps.values() for e in sweep})
    if eps_main not in eps_all:
        raise ValueError(f"eps_main {eps_main:g} is not in the sweep ({', '.join(f'{e:g}' for e in eps_all)})")
    along = {name: {e: order_along_curve(r)[1] for e, r in sweep.items()} for name, sweep in sweeps.items()}

    def having(*eps: float) -> list[str]:  # the configurations with a finite order at every one of ``eps``
        return [n for n, v in along.items() if all(math.isfinite(v.get(e, math.nan)) for e in eps)]

    per_eps = {e: bootstrap_mean([along[n][e] for n in having(e)], level) for e in eps_all}
    main = per_eps[eps_main]
    full = having(eps_all[0], eps_main, eps_all[-1])
    checks = [Check(f"eps {eps_main:g} ordered: mean MPD < {chance / 2:.2g} (half of random)",
                    None if main.n < 2 else main.high < chance / 2, f"{main.text()} over {main.n} configurations")]
    for side, e in (("smaller", eps_all[0]), ("larger", eps_all[-1])):
        label = f"{side} eps more random: MPD(eps {e:g}) - MPD(eps {eps_main:g}) >= {margin:g}"
        if e == eps_main:
            checks.append(Check(label, None, f"the sweep has no {side} eps"))
            continue
        est = bootstrap_mean([along[n][e] - along[n][eps_main] for n in having(e, eps_main)], level)
        checks.append(Check(label, None if est.n < 2 else est.low >= margin - 1e-12, est.text()))
    return Judgement("Figure C.4.1", "eps = 0.1 gives the expected order of the strategies; smaller and larger eps "
                     "become more random the farther they are from 0.1", combine(checks), tuple(checks),
                     f"order along the curve (MPD over [T/4, T)) averaged over the configurations ({len(full)} "
                     "with both ends and the main eps); "
                     f"differences with {level:.0%} paired bootstrap intervals over configurations, effect at least "
                     f"{margin:g}", "mean MPD along the curve: " + ", ".join(f"eps {e:g} {per_eps[e].text()}"
                                                                              for e in eps_all)
                     + f" (random order {chance:.2g})",
                     f"{len(sweeps) - len(full)} configuration(s) lack an end of the sweep or the main eps (or an "
                     "order before T: a run that diverged early); one stage-1 run each")


def bounds_figure(data: Mapping[str, tuple[RunResult, RunResult]], eps: float,
                  thresholds: Mapping[str, float]) -> Judgement:
    """Figure C.5.1: the distances stay within eps exp(t lambda_min(t)) <= d(t) <= eps exp(t lambda_max(t)).

    ``data`` maps a run name to (perturbation run, its stage-1 run). The fit and the tightness at T of each run
    are judged by :func:`distance_fit_figure` (Figure 3b's checks, reused). The bounds are judged here at the
    tangent steps t < T (at T the extreme strategies attain them by construction), with censoring counted: where
    the stage-1 run has unresolved exponents (``ftle_unresolved`` > 0) the true sigma_min is below the resolution,
    so the drawn lower bound is too high and a distance below it is undecided, not a violation; the upper bound is
    never censored. ``ftle_uncertain`` (exponents that could be on either side of 0: the chaotic / non-chaotic
    split, not the bounds) is reported."""
    from chaosnb.analysis import bounds_coverage, lyapunov_distance_bounds

    checks, parts = [], []
    up_ok = up_n = lo_ok = lo_fail = lo_censored = 0
    for name, (res, stage1) in data.items():
        fit = distance_fit_figure(res, stage1, eps, thresholds)
        checks += [Check(f"{name}: {c.name}", c.passed, c.measured) for c in fit.checks
                   if "inside the Lyapunov bounds" not in c.name]
        b_steps, lower, upper = lyapunov_distance_bounds(stage1, eps)
        c_steps, _, _ = bounds_coverage(res, b_steps, lower, upper)
        unresolved = dict(zip(*(np.asarray(a) for a in stage1.series("ftle_unresolved")), strict=True))
        uncertain = dict(zip(*(np.asarray(a) for a in stage1.series("ftle_uncertain")), strict=True))
        steps, d = res.series("distance")
        big_t = int(b_steps[-1]) if len(b_steps) else -1
        for t in c_steps:
            if int(t) >= big_t:
                continue
            j = int(np.nonzero(b_steps == t)[0][0])
            row = np.asarray(d[int(np.nonzero(steps == t)[0][0])], dtype=np.float64)
            row = row[np.isfinite(row)]
            up_n += row.size
            up_ok += int(np.sum(row <= upper[j]))
            below = row < lower[j]
            if unresolved.get(int(t), 0) > 0:
                lo_censored += int(below.sum())
                lo_ok += int((~below).sum())
            else:
                lo_fail += int(below.sum())
                lo_ok += int((~below).sum())
        parts.append(f"{name}: unresolved exponents (max over tangent steps) "
                     f"{int(max(unresolved.values(), default=0))}, uncertain {int(max(uncertain.values(), default=0))}")
    checks.append(Check("upper bound holds at every tangent step before T", None if not up_n else up_ok == up_n,
                        f"{up_ok} of {up_n} (step, strategy) pairs"))
    decided = lo_ok + lo_fail
    checks.append(Check("lower bound holds at every tangent step before T (censored pairs undecided)",
                        None if not decided else lo_fail == 0,
                        f"{lo_ok} hold, {lo_fail} violate, {lo_censored} undecided (below a lower bound that "
                        "unresolved exponents make too high)"))
    return Judgement("Figure C.5.1", "the distances stay within the first-order bounds from the extreme finite-time "
                     "exponents even where these are not tight; the fit sqrt(eps^2 + a t + b t^2) describes them",
                     combine(checks), tuple(checks),
                     "Figure 3b's fit and tightness checks per run, and the bounds before T with censoring counted",
                     "; ".join(parts) + f"; lower-bound pairs that depend on censoring: {lo_censored} of "
                     f"{decided + lo_censored}", "one stage-1 run per configuration")
# ---------------------------------------------------------------------------------------------- the paper's numerics
PAPER_NUMERICS_THRESHOLDS = {"null_share": 0.99, "same": 0.01, "excess": 0.1}
"""Issue 11 item 5. null_share: a float32 spectrum "signs the null space" when n+ + n- >= this share of N (exactly 1
with no zero tolerance unless an eigenvalue is exactly 0). same: two runs are "the same" when their mini-batch losses
stay within this relative difference (the B.1 page's 1 %). excess: the float32 chaotic dimension "starts high" when
it exceeds the exact one by at least this share of N at the first tangent step (a 10 % excess is ~535 directions of
the MLP, ~100 times the exact count's float64 error bound)."""


def _num_params(result: RunResult) -> int:
    theta = result.arrays.get("final_theta")
    if theta is None:
        raise ValueError("the run has no final_theta array: cannot tell its number of parameters")
    return int(np.asarray(theta).shape[-1])


def _at_common_steps(a: RunResult, b: RunResult, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    (sa, va), (sb, vb) = a.series(metric), b.series(metric)
    common, ia, ib = np.intersect1d(sa, sb, return_indices=True)
    return common, np.asarray(va, dtype=np.float64)[ia], np.asarray(vb, dtype=np.float64)[ib]


def paper_counts_figure(exact: RunResult, paper: RunResult,
                        thresholds: Mapping[str, float] = PAPER_NUMERICS_THRESHOLDS) -> Judgement:
    """Figure B.2.2 (paper numerics): which features of the eigenvalue counts come from float32 round-off.

    ``exact``: the run with the exact spectrum (zero tolerance 1e-5 max|lambda|); ``paper``: the same trajectory
    with a dense float32 ``eigh`` and no zero tolerance, compared at their common spectrum steps. Checks: (1) the
    float32 spectra give (almost) every null direction a sign: mean (n+ + n-) / N >= ``null_share`` while the exact
    rank is below N / 2; (2) most float32 "negative" eigenvalues are noise: n-(float32) - n-(exact) > n-(exact) on
    average; (3) the float32 counts are complementary by construction: n+ + n- varies by at most 1 % of N.
    Reproduced = the round-off reading of the paper's counts holds at this horizon."""
    steps, pos32, pos_ex = _at_common_steps(paper, exact, "n_pos")
    _, neg32, neg_ex = _at_common_steps(paper, exact, "n_neg")
    _, _, rank_ex = _at_common_steps(paper, exact, "rank")
    if steps.size == 0:
        raise ValueError("paper_counts_figure: the two runs have no spectrum step in common")
    n = _num_params(exact)
    share32, share_ex = float(np.mean(pos32 + neg32)) / n, float(np.mean(rank_ex)) / n
    noise, real = float(np.mean(neg32 - neg_ex)), float(np.mean(neg_ex))
    spread = float(np.ptp(pos32 + neg32)) / n
    checks = (
        Check(f"float32 spectra sign the null space: (n+ + n-) / N >= {thresholds['null_share']:g}, exact rank < N/2",
              share32 >= thresholds["null_share"] and share_ex < 0.5,
              f"float32 {share32:.3f}, exact rank / N {share_ex:.3f} (N = {n})"),
        Check("most float32 negative eigenvalues are null-space noise: n-(float32) - n-(exact) > n-(exact)",
              noise > real, f"mean n- float32 {np.mean(neg32):.0f}, exact {real:.1f}, excess {noise:.0f}"),
        Check("float32 n+ and n- are complementary by construction: n+ + n- varies by <= 1% of N",
              spread <= 0.01, f"range of (n+ + n-) / N over {steps.size} spectra: {spread:.4f}"),
    )
    trend32, trend_ex = trend_estimate(paper, "n_pos"), trend_estimate(exact, "n_pos")
    measured = (f"at {steps.size} common spectrum steps ({int(steps[0])}..{int(steps[-1])}): mean n+ float32 "
                f"{np.mean(pos32):.0f} vs exact {np.mean(pos_ex):.1f}, n- float32 {np.mean(neg32):.0f} vs exact "
                f"{np.mean(neg_ex):.1f}; trend of n+ per 1000 steps float32 {trend32.text()}, exact {trend_ex.text()}")
    return Judgement("Figure B.2.2 (paper numerics)", "the paper's eigenvalue counts (dense float32 eigh, no zero "
                     "tolerance) are dominated by round-off in the Hessian's null space", combine(checks), checks,
                     "every check must hold for the round-off reading to be reproduced", measured,
                     f"one seed; float32 spectra every {paper.config.spectrum_every} steps over "
                     f"{paper.config.steps} steps")


def paper_pruning_figure(exact: Mapping[str, RunResult], paper: Mapping[str, RunResult],
                         thresholds: Mapping[str, float] = PAPER_NUMERICS_THRESHOLDS) -> Judgement:
    """Figure 1 (paper numerics): does float32 round-off make chaotic and negative pruning differ?

    ``exact`` / ``paper``: the runs ``chaotic`` and ``neg`` with the exact spectrum and with a dense float32
    ``eigh`` without zero tolerance (the paper runs are the first steps of the exact ones). Over the paper runs'
    horizon: (1) the float32 runs' mini-batch losses differ by more than ``same`` (relative) at some step; (2) the
    exact runs' losses stay within ``same``. Both hold = the difference the paper shows is a round-off effect at
    this horizon. The mean number of pruned directions of each run is reported."""
    horizon = min(int(paper["chaotic"].steps_done), int(paper["neg"].steps_done))

    def rel_diff(runs: Mapping[str, RunResult]) -> float:
        a = np.asarray(runs["chaotic"].series("train_loss")[1][:horizon], dtype=np.float64)
        b = np.asarray(runs["neg"].series("train_loss")[1][:horizon], dtype=np.float64)
        k = min(a.size, b.size)
        return float(np.nanmax(np.abs(a[:k] - b[:k]) / np.abs(a[:k]))) if k else math.nan

    def pruned(res: RunResult) -> float:
        values = np.asarray(res.series("n_pruned")[1][:horizon], dtype=np.float64)
        return float(np.mean(values)) if values.size else math.nan

    d32, d_ex = rel_diff(paper), rel_diff(exact)
    same = thresholds["same"]
    checks = (Check(f"float32 numerics: chaotic and negative pruned losses differ by > {same:.0%}", d32 > same,
                    f"max relative difference {d32:.2e} over {horizon} steps"),
              Check(f"exact numerics: the two runs agree within {same:.0%}", d_ex <= same,
                    f"max relative difference {d_ex:.2e} over the same {horizon} steps"))
    measured = (f"mean pruned directions per step: float32 chaotic {pruned(paper['chaotic']):.0f}, negative "
                f"{pruned(paper['neg']):.0f}; exact chaotic {pruned(exact['chaotic']):.1f}, negative "
                f"{pruned(exact['neg']):.1f} (exact negative pruning also removes the zero eigenspace, which the "
                "exact chaotic pruning keeps)")
    return Judgement("Figure 1 (paper numerics)", "the difference between chaotic and negative pruning in the paper's "
                     "Figure 1 comes from float32 round-off (noise eigenvalues of the null space)", combine(checks),
                     checks, "both checks must hold for the round-off reading to be reproduced", measured,
                     f"one seed; {horizon} steps with a dense float32 spectrum each (the exact runs are longer)")


def paper_dimension_figure(exact: RunResult, paper: RunResult,
                           thresholds: Mapping[str, float] = PAPER_NUMERICS_THRESHOLDS) -> Judgement:
    """Figure C.1.2 (paper numerics): does the chaotic dimension "start high" because of float32 round-off?

    ``exact``: the exact tangent map (float64, exponents counted beyond their error bound); ``paper``: a dense
    float32 tangent map with a float32 ``eigh`` of Y^T Y and exponent > 0 counted as chaotic, on the same
    trajectory. Checks at the first common tangent step: (1) the float32 dimension exceeds the exact one by at
    least ``excess`` x N; (2) the exact dimension is at most ``excess`` x N itself (it does not start high)."""
    steps, dim32, dim_ex = _at_common_steps(paper, exact, "chaotic_dim")
    if steps.size == 0:
        raise ValueError("paper_dimension_figure: the two runs have no tangent step in common")
    n = _num_params(exact)
    excess = (dim32[0] - dim_ex[0]) / n
    checks = (Check(f"float32 chaotic dimension at the first step exceeds the exact one by >= "
                    f"{thresholds['excess']:.0%} of N", bool(excess >= thresholds["excess"]),
                    f"step {int(steps[0])}: float32 {dim32[0]:.0f}, exact {dim_ex[0]:.0f} of N = {n} "
                    f"(excess {excess:.1%} of N)"),
              Check(f"the exact chaotic dimension does not start high (<= {thresholds['excess']:.0%} of N)",
                    bool(dim_ex[0] <= thresholds["excess"] * n), f"{dim_ex[0]:.0f} = {dim_ex[0] / n:.1%} of N"))
    measured = "chaotic dimension (float32 / exact) at steps " + ", ".join(
        f"{int(t)}: {a:.0f} / {b:.0f}" for t, a, b in zip(steps, dim32, dim_ex, strict=True))
    return Judgement("Figure C.1.2 (paper numerics)", "the chaotic dimension that starts high in the paper is "
                     "float32 round-off in the directions no step has touched", combine(checks), checks,
                     "both checks must hold for the round-off reading to be reproduced", measured,
                     f"one seed; {paper.config.steps} steps (a dense float32 tangent map costs a 5,350^3 product per "
                     "step for the MLP)")
