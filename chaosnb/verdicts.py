"""Each figure's criterion as tested code: recorded runs in, a :class:`Judgement` out.

A judgement is a list of :class:`Check` objects, each a claim of the paper made testable (with the measured
effect and the threshold it was held to), combined by one rule, :func:`combine`: reproduced when every testable
check holds, not reproduced when none does, partly otherwise; "not testable at this profile" when no check can be
decided at the profile's horizon (for example when SGD itself has not started to learn, a comparison with it says
nothing). Thresholds come from the profile's ``verdicts`` section (``profiles.yaml``, where each is explained).
Notebooks call these functions and display / glue the result; no criterion is written in a notebook.

Implemented so far: the pruning figures (main-text Figure 1, Figures B.1.1-B.1.5).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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


def _pruning_check(kind: str, run: str | None, s: PruningStats, th: Mapping[str, float]) -> Check:
    sgd_learned = s.final["sgd"] - s.start["sgd"] >= th["sgd_min_gain"]
    name = PRUNE_NAMES.get(run or "", "")
    if kind == "slower":  # ends below SGD by a margin
        gap = s.final["sgd"] - s.final[run]
        measured = f"final accuracy {s.final[run]:.3f} vs SGD {s.final['sgd']:.3f}, gap {gap:+.3f}"
        if not sgd_learned:
            return Check(f"{name} ends >= {th['acc_margin']:g} below SGD", None, measured + "; SGD has not learned")
        return Check(f"{name} ends >= {th['acc_margin']:g} below SGD", gap >= th["acc_margin"], measured)
    if kind == "stuck":  # improves far less than SGD over the run
        gain, sgd_gain = s.final[run] - s.start[run], s.final["sgd"] - s.start["sgd"]
        ratio = gain / sgd_gain if sgd_gain > 0 else math.nan
        measured = f"gain {gain:+.3f} vs SGD {sgd_gain:+.3f} (ratio {ratio:.2f})"
        label = f"{name} gains <= {th['stuck_ratio']:g} x SGD's gain"
        if not sgd_learned:
            return Check(label, None, measured + "; SGD has not learned")
        return Check(label, ratio <= th["stuck_ratio"], measured)
    if kind == "fast":  # reaches the level before the chaotic-pruned run and no later than SGD
        hit, hit_sgd, hit_chaotic = s.reach[run], s.reach["sgd"], s.reach["chaotic"]
        fmt = lambda step: "never" if step is None else f"step {step}"  # noqa: E731
        measured = (f"first at {s.level:.3f} (= {th['fast_fraction']:g} x SGD's final): positive {fmt(hit)}, SGD "
                    f"{fmt(hit_sgd)}, chaotic {fmt(hit_chaotic)}")
        label = f"{name} reaches {th['fast_fraction']:g} x SGD's final accuracy first"
        if not sgd_learned:
            return Check(label, None, measured + "; SGD has not learned")
        ok = hit is not None and (hit_sgd is None or hit <= hit_sgd) and (hit_chaotic is None or hit < hit_chaotic)
        return Check(label, ok, measured)
    if kind == "crash":
        step = s.diverged.get("pos")
        measured = f"diverged at step {step}" if step is not None else f"no divergence in {s.steps} steps"
        return Check("positive pruned run diverges", step is not None, measured)
    raise ValueError(f"unknown pruning check {kind!r}")


def pruning_figure(figure: str, results: Mapping[str, RunResult], window: int,
                   thresholds: Mapping[str, float]) -> Judgement:
    """Verdict of a pruning figure (Figure 1, B.1.1-B.1.5) from its runs ``sgd``, ``chaotic``, ``neg``, ``pos``.

    Checks (each with its effect size): a CGD run ends at least ``acc_margin`` below SGD in smoothed training
    accuracy ("slower"); improves by at most ``stuck_ratio`` times SGD's gain ("cannot improve much"); the positive
    pruned run is first to reach ``fast_fraction`` x SGD's final accuracy ("fast"); it diverges ("crash"). The
    comparisons with SGD are not testable while SGD itself has gained less than ``sgd_min_gain``.
    """
    if figure not in PRUNING_CHECKS:
        raise ValueError(f"unknown pruning figure {figure!r}; valid: {', '.join(PRUNING_CHECKS)}")
    missing = {"sgd", "chaotic", "neg", "pos"} - set(results)
    if missing:
        raise ValueError(f"{figure} needs the runs sgd, chaotic, neg and pos; missing {sorted(missing)}")
    s = pruning_stats(results, window, thresholds["fast_fraction"])
    checks = tuple(_pruning_check(*(spec.split(":") + [None])[:2], s, thresholds) for spec in PRUNING_CHECKS[figure])
    measured = "final smoothed training accuracy " + ", ".join(f"{PRUNE_NAMES[n]} {a:.3f}" for n, a in s.final.items())
    measured += "; " + ("diverged: " + ", ".join(f"{PRUNE_NAMES[n]} at step {t}" for n, t in s.diverged.items())
                        if s.diverged else "no run diverged")
    criterion = (f"reproduced if every check holds, partly if some do (accuracies are means over the last {window} "
                 "steps)")
    limits = "one seed per run"
    if any(c.passed is None for c in checks):
        limits += f"; SGD gains less than {thresholds['sgd_min_gain']:g} accuracy in {s.steps} steps, so comparisons " \
                  "with it are not testable at this profile"
    return Judgement(figure, PRUNING_CLAIMS[figure], combine(checks), checks, criterion, measured, limits)
