"""The experiment catalogue: which runs each figure needs, as RunConfigs built from a profile.

Notebooks ask this module for configurations and the results store (:mod:`chaosnb.runs`) for results, so
the book driver can compute every run of a profile up front, in parallel, before any notebook executes.
"""

from __future__ import annotations

import copy
import dataclasses
from functools import lru_cache
from importlib import resources

import yaml

from chaosnb.config import RunConfig, log_spaced_steps
from chaosnb.data import BatchSampler
from chaosnb.perturb import STRATEGIES

PRUNE_SETS_SHOWN = ("chaotic", "neg", "pos")
DATASET_SIZES = {"usps": 7291, "fashion_mnist": 60000}

# Figure panels of the pruning experiments: (dataset, model, momentum)
PRUNING_PANELS = {
    "fig1": ("usps", "mlp", 0.0),
    "B.1.1": ("usps", "mlp", 0.9),
    "B.1.3": ("usps", "cnn", 0.0),
    "B.1.4": ("fashion_mnist", "mlp", 0.0),
    "B.1.5": ("fashion_mnist", "cnn", 0.0),
}
# Runs of the eigenspace figures B.2.x: name -> (dataset, model, activation, momentum)
EIGEN_RUNS = {
    "USPS MLP sigmoid": ("usps", "mlp", "sigmoid", 0.0),
    "USPS MLP sigmoid, momentum": ("usps", "mlp", "sigmoid", 0.9),
    "USPS MLP relu": ("usps", "mlp", "relu", 0.0),
    "USPS CNN": ("usps", "cnn", "relu", 0.0),
    "FMNIST MLP relu": ("fashion_mnist", "mlp", "relu", 0.0),
    "FMNIST MLP relu, momentum": ("fashion_mnist", "mlp", "relu", 0.9),
    "FMNIST CNN": ("fashion_mnist", "cnn", "relu", 0.0),
}
# The eight reference (stage-1) runs of C.1, C.2, C.3, C.5: name -> (dataset, model, momentum)
REFERENCE_RUNS = {
    f"{ds_label} {model.upper()}{', momentum' if mom else ''}": (ds, model, mom)
    for ds, ds_label in (("usps", "USPS"), ("fashion_mnist", "FMNIST"))
    for model in ("mlp", "cnn") for mom in (0.0, 0.9)
}


SHARED_SECTIONS = ("verdict_thresholds",)
"""Top-level sections of profiles.yaml that are not profiles (YAML anchors the profiles include)."""


@lru_cache(maxsize=1)
def _profiles() -> dict:
    data = yaml.safe_load(resources.files("chaosnb").joinpath("profiles.yaml").read_text())
    return {name: value for name, value in data.items() if name not in SHARED_SECTIONS}


def profile_names() -> tuple[str, ...]:
    return tuple(_profiles())


def _merge(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_profile(name: str, overrides: dict | None = None) -> dict:
    """A profile's settings (``profiles.yaml``), with ``overrides`` merged in key by key."""
    profiles = _profiles()
    if name not in profiles:
        raise ValueError(f"unknown profile {name!r}; valid profiles are: {', '.join(profiles)}")
    return {**_merge(profiles[name], overrides or {}), "name": name}


def steps_for(value: int | str, dataset: str, batch_size: int) -> int:
    """An int, or ``"<n> epochs"`` converted with the dataset's steps per epoch (last batch included)."""
    if isinstance(value, int):
        return value
    number, unit = str(value).split()
    if unit not in ("epoch", "epochs"):
        raise ValueError(f"steps must be an int or '<n> epochs', got {value!r}")
    return int(float(number) * BatchSampler(DATASET_SIZES[dataset], batch_size, 0).steps_per_epoch)


def _by_model(value, model: str):
    return value[model] if isinstance(value, dict) else value


def base_config(profile: dict, dataset: str, model: str, **fields) -> RunConfig:
    """The profile's lr / batch size / seed for a dataset and model, plus ``fields``; every model takes
    RunConfig's default spectrum method, the exact low-rank one."""
    values = {"dataset": dataset, "model": model, "lr": float(_by_model(profile["lr"], model)),
              "batch_size": profile["batch_size"], "seed": profile["seed"]}
    values.update(fields)
    return RunConfig(**values)


def seeds_for(profile: dict, section: str) -> tuple[int, ...]:
    """The seeds of a section's multi-seed runs: the profile's ``seed``, ``seed + 1``, ... (``seeds`` of the
    section, default 1). The first seed's runs are the single-seed runs every page already shows."""
    n = profile[section].get("seeds", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{section}.seeds: must be a positive integer, got {n!r}")
    return tuple(int(profile["seed"]) + i for i in range(n))


def pruning_runs(profile: dict, panel: str, seed: int | None = None) -> dict[str, RunConfig]:
    """SGD and CGD with each prune set for one pruning panel (Figure 1, B.1.1-B.1.5); ``seed`` (default: the
    profile's) sets the initialisation and the batches, shared by the four runs (paired comparisons)."""
    dataset, model, momentum = PRUNING_PANELS[panel]
    p = profile["pruning"]
    steps = steps_for(p[f"{model}_steps"], dataset, profile["batch_size"])
    common = dict(momentum=momentum, steps=steps, eval_every=p["eval_every"],
                  seed=profile["seed"] if seed is None else int(seed))
    runs = {"sgd": base_config(profile, dataset, model, **common)}
    for prune_set in PRUNE_SETS_SHOWN:
        runs[prune_set] = base_config(profile, dataset, model, optimizer="cgd", prune_set=prune_set, **common)
    return runs


def pruning_seed_runs(profile: dict, panel: str) -> dict[int, dict[str, RunConfig]]:
    """seed -> the panel's four runs: ``pruning.seeds`` seeds for the MLP panels, one for the CNN panels (a CNN
    CGD step with its exact spectrum costs ~0.15-0.2 s, 2,000 steps ~5 minutes: more seeds do not fit the quick
    profile)."""
    seeds = seeds_for(profile, "pruning") if PRUNING_PANELS[panel][1] == "mlp" else (int(profile["seed"]),)
    return {seed: pruning_runs(profile, panel, seed) for seed in seeds}


def pruning_start_runs(profile: dict, seed: int | None = None) -> dict[str, RunConfig]:
    """Main-text Figure 2: CGD (chaotic) switched on at several steps vs SGD, MLP on USPS at batch 16."""
    p = profile["pruning_start"]
    common = dict(steps=int(p["steps"]), batch_size=int(p["batch_size"]), eval_every=0,
                  seed=profile["seed"] if seed is None else int(seed))
    runs = {"sgd": base_config(profile, "usps", "mlp", **common)}
    for start in p["starts"]:
        runs[f"pruning from {start}"] = base_config(profile, "usps", "mlp", optimizer="cgd", prune_set="chaotic",
                                                    prune_start=int(start), **common)
    return runs


def pruning_start_seed_runs(profile: dict) -> dict[int, dict[str, RunConfig]]:
    """seed -> Figure 2's runs, for the ``pruning_start.seeds`` seeds."""
    return {seed: pruning_start_runs(profile, seed) for seed in seeds_for(profile, "pruning_start")}


def eigen_runs(profile: dict, datasets: tuple[str, ...] = ("usps", "fashion_mnist"),
               seed: int | None = None) -> dict[str, RunConfig]:
    """SGD runs with Hessian spectra every k steps (Figures B.2.1-B.2.7)."""
    p = profile["eigen"]
    out = {}
    for name, (dataset, model, activation, momentum) in EIGEN_RUNS.items():
        if dataset in datasets:
            out[name] = base_config(profile, dataset, model, activation=activation, momentum=momentum,
                                    steps=steps_for(p["steps"], dataset, profile["batch_size"]),
                                    spectrum_every=int(p["spectrum_every"]),
                                    seed=profile["seed"] if seed is None else int(seed))
    return out


def eigen_seed_runs(profile: dict) -> dict[str, list[RunConfig]]:
    """Run name -> its configurations, one per seed: ``eigen.seeds`` seeds for the MLP runs, one for the CNN."""
    per_seed = [eigen_runs(profile, seed=seed) for seed in seeds_for(profile, "eigen")]
    return {name: [runs[name] for runs in per_seed] if EIGEN_RUNS[name][1] == "mlp" else [per_seed[0][name]]
            for name in per_seed[0]}


PAPER_NUMERICS = dict(spectrum_method="dense", spectrum_rtol=0.0, dtype="float32")
"""The authors' numerics: a dense float32 Hessian and float32 ``eigh`` with no zero tolerance (every eigenvalue
is positive or negative, the null space included)."""


def paper_numerics_runs(profile: dict) -> dict[str, RunConfig]:
    """Issue 11 item 5: runs with the authors' numerics next to the exact ones, model ``paper_numerics.model``.

    ``"B.2.2"``: the B.2 SGD run on USPS (the sigmoid MLP, or the CNN) with a dense float32 spectrum every
    ``b22_every`` steps (a subset of the exact run's spectrum steps; the same trajectory). ``"Figure 1 chaotic"``,
    ``"Figure 1 neg"``: the first ``fig1_steps`` steps of the USPS pruning panel's CGD runs. ``"C.1.2"``: the USPS
    reference run's first ``c12_steps`` steps with a float32 tangent map (exponents at log-spaced steps), and
    ``"C.1.2 exact"`` the same run with the exact engine (low-rank spectrum, float64 tangent map)."""
    p = profile["paper_numerics"]
    model = p["model"]
    eigen_name = "USPS MLP sigmoid" if model == "mlp" else "USPS CNN"
    eigen = eigen_runs(profile, ("usps",))[eigen_name]
    every = int(p["b22_every"])
    if every % eigen.spectrum_every:
        raise ValueError(f"paper_numerics.b22_every ({every}) must be a multiple of eigen.spectrum_every "
                         f"({eigen.spectrum_every}) so that the exact run has a spectrum at the same steps")
    panel = next(k for k, v in PRUNING_PANELS.items() if v == ("usps", model, 0.0))
    fig1_steps = steps_for(p["fig1_steps"], "usps", profile["batch_size"])
    c12_steps = steps_for(p["c12_steps"], "usps", profile["batch_size"])
    schedule = log_spaced_steps(c12_steps, per_decade=3)
    exact = base_config(profile, "usps", model, steps=c12_steps, tangent_steps=schedule)
    out = {"B.2.2": dataclasses.replace(eigen, spectrum_every=every, **PAPER_NUMERICS)}
    for prune_set in ("chaotic", "neg"):
        cgd = pruning_runs(profile, panel)[prune_set]
        out[f"Figure 1 {prune_set}"] = dataclasses.replace(cgd, steps=fig1_steps, eval_every=0, **PAPER_NUMERICS)
    out["C.1.2"] = dataclasses.replace(exact, tangent_dtype="float32", **PAPER_NUMERICS)
    out["C.1.2 exact"] = exact
    return out


def tangent_schedule(profile: dict, model: str, steps: int, key: str = "points") -> tuple[int, ...]:
    """Log-spaced steps at which the finite-time Lyapunov spectrum is computed (always incl. the last); ``key``
    names the profile's ``lyapunov`` entry with the number of points (falling back to ``points``)."""
    lyapunov = profile["lyapunov"]
    points = int(_by_model(lyapunov.get(key, lyapunov["points"]), model))
    first = min(int(profile["subspace"]["first"]), steps)
    steps_list = set(log_spaced_steps(steps, per_decade=1, first=1))
    if points > 1:
        import numpy as np

        steps_list = {int(round(v)) for v in np.geomspace(first, steps, points)}
    return tuple(sorted(steps_list | {first, steps}))


def snapshot_schedule(schedule: tuple[int, ...], steps: int, first: int) -> tuple[int, ...]:
    """Snapshot steps for Figure C.2.1: ``first`` and the last tangent step in the first half of training (a
    stand-in for T_conv that still has later tangent steps to compare with); only those in ``schedule``."""
    later = [s for s in schedule if first < s <= steps // 2]
    return tuple(s for s in (first, *later[-1:]) if s in schedule and s < steps) or (steps,)


def profile_snapshots(profile: dict, schedule: tuple[int, ...], steps: int) -> tuple[int, ...]:
    """:func:`snapshot_schedule` from the profile's first subspace step (``subspace.first``, at most ``steps``)."""
    return snapshot_schedule(schedule, steps, min(int(profile["subspace"]["first"]), steps))


def reference_runs(profile: dict) -> dict[str, RunConfig]:
    """The eight SGD runs with the tangent map (C.1.1, C.1.2, C.2.1 and stage 1 of C.3-C.5)."""
    out = {}
    for name, (dataset, model, momentum) in REFERENCE_RUNS.items():
        steps = steps_for(profile["lyapunov"][f"{model}_steps"], dataset, profile["batch_size"])
        schedule = tangent_schedule(profile, model, steps)
        out[name] = base_config(profile, dataset, model, momentum=momentum, steps=steps, tangent_steps=schedule,
                                snapshot_steps=profile_snapshots(profile, schedule, steps))
    return out


def lyapunov_pruning_runs(profile: dict) -> dict[str, RunConfig]:
    """Figure C.1.3: MLP on USPS with momentum 0.9, SGD and CGD with each prune set, with the tangent map.

    The SGD run takes the subspace snapshots of the reference runs too: where C.1.3's horizon and points equal
    those of the USPS MLP momentum reference run (the quick profile), the two are one configuration, computed
    once."""
    steps = steps_for(profile["lyapunov"]["pruning_steps"], "usps", profile["batch_size"])
    schedule = tangent_schedule(profile, "mlp", steps, key="pruning_points")
    common = dict(momentum=0.9, steps=steps, tangent_steps=schedule)
    runs = {"sgd": base_config(profile, "usps", "mlp", snapshot_steps=profile_snapshots(profile, schedule, steps),
                               **common)}
    for prune_set in PRUNE_SETS_SHOWN:
        runs[prune_set] = base_config(profile, "usps", "mlp", optimizer="cgd", prune_set=prune_set, **common)
    return runs


def perturbation_run(profile: dict, reference: RunConfig, eps: float) -> RunConfig:
    """Stage 2 of the distance experiments for one reference run: five perturbed models and the original."""
    import dataclasses

    p = profile["perturbation"]
    steps = steps_for(p[f"{reference.model}_steps"], reference.dataset, profile["batch_size"])
    stage1 = dataclasses.replace(reference, steps=steps,
                                 tangent_steps=tuple(s for s in reference.tangent_steps if s <= steps) or (steps,),
                                 snapshot_steps=tuple(s for s in reference.snapshot_steps if s <= steps))
    return dataclasses.replace(stage1, perturb_eps=float(eps), perturb_strategies=STRATEGIES,
                               eval_every=int(p["eval_every"]))


def perturbation_runs(profile: dict, eps: float) -> dict[str, RunConfig]:
    return {name: perturbation_run(profile, ref, eps) for name, ref in reference_runs(profile).items()}


def eps_sweep_runs(profile: dict) -> dict[float, RunConfig]:
    """Figure C.4.1: one reference configuration perturbed with each eps of the sweep."""
    p = profile["eps_sweep"]
    name = next(n for n, (ds, model, mom) in REFERENCE_RUNS.items()
                if ds == p["dataset"] and model == p["model"] and mom == 0.0)
    ref = reference_runs(profile)[name]
    return {float(eps): perturbation_run(profile, ref, eps) for eps in p["eps"]}


def all_configs(profile: dict) -> list[RunConfig]:
    """Every run the book needs at this profile (stage-1 runs first), without duplicates."""
    configs: list[RunConfig] = []
    for panel in PRUNING_PANELS:
        configs += pruning_runs(profile, panel).values()
    configs += pruning_start_runs(profile).values()
    configs += eigen_runs(profile).values()
    # further seeds (issue 11 item 4), then the paper's numerics (item 5): after the single-seed runs
    for panel in PRUNING_PANELS:
        configs += [c for runs in pruning_seed_runs(profile, panel).values() for c in runs.values()]
    configs += [c for runs in pruning_start_seed_runs(profile).values() for c in runs.values()]
    configs += [c for runs in eigen_seed_runs(profile).values() for c in runs]
    configs += paper_numerics_runs(profile).values()
    configs += reference_runs(profile).values()
    configs += lyapunov_pruning_runs(profile).values()
    for eps in (profile["perturbation"]["eps_main"], profile["perturbation"]["eps_large"]):
        configs += perturbation_runs(profile, eps).values()
    configs += eps_sweep_runs(profile).values()
    configs += [c for pairs in equal_lr_seed_runs(profile).values() for pair in pairs for c in pair]
    configs += [c for sweep in eps_sweep_all_runs(profile).values() for c in sweep.values()]
    stage1 = [c.stage1() for c in configs if c.is_perturbation]
    return list(dict.fromkeys(stage1 + configs))


# --- perturbations (C.3-C.5): equal-lr comparison (C.3.1) and the eps sweep over every configuration (C.4.1)
def equal_lr_runs(profile: dict, eps: float | None = None) -> dict[str, tuple[RunConfig, RunConfig]]:
    """Figure C.3.1 at equal learning rate: {dataset label: (CNN run, MLP run)}, both with momentum, perturbed at
    ``eps`` (default ``eps_main``).

    ``perturbation.equal_lr`` = {model: M, like: L} reruns model M at L's learning rate and perturbation horizon
    (its stage 1 computes the finite-time spectrum only at the final step, which is all the directions need); the
    L run is the profile's own perturbation run. Where M's lr and horizon already equal L's (the paper profile),
    M's own perturbation run is used and nothing new is computed. {} without the key."""
    import dataclasses

    spec = profile["perturbation"].get("equal_lr")
    if not spec:
        return {}
    model, like = spec["model"], spec["like"]
    if {model, like} != {"cnn", "mlp"}:
        raise ValueError(f"perturbation.equal_lr must name model and like as cnn and mlp, got {spec!r}")
    eps = float(profile["perturbation"]["eps_main"] if eps is None else eps)
    reference = reference_runs(profile)
    out = {}
    for label in ("USPS", "FMNIST"):
        ref_like = reference[f"{label} {like.upper()}, momentum"]
        ref_model = reference[f"{label} {model.upper()}, momentum"]
        run_like = perturbation_run(profile, ref_like, eps)
        run_model = perturbation_run(profile, ref_model, eps)
        if run_model.lr != run_like.lr or run_model.steps != run_like.steps:
            stage1 = dataclasses.replace(ref_model, lr=run_like.lr, steps=run_like.steps,
                                         tangent_steps=(run_like.steps,), snapshot_steps=())
            run_model = dataclasses.replace(stage1, perturb_eps=eps, perturb_strategies=STRATEGIES,
                                            eval_every=int(profile["perturbation"]["eval_every"]))
        pair = (run_model, run_like) if model == "cnn" else (run_like, run_model)
        out[label] = pair
    return out


def eps_sweep_all_runs(profile: dict) -> dict[str, dict[float, RunConfig]]:
    """Figure C.4.1 over every reference configuration (the caption pools all experiments): {configuration:
    {eps: perturbation run}} for each eps in ``eps_sweep.all_configs_eps`` (the eps of the sweep when it is
    ``all``). The one configuration of :func:`eps_sweep_runs` keeps its full sweep. {} without the key."""
    p = profile["eps_sweep"]
    spec = p.get("all_configs_eps")
    if not spec:
        return {}
    eps_list = [float(e) for e in (p["eps"] if spec == "all" else spec)]
    out = {name: {eps: perturbation_run(profile, ref, eps) for eps in eps_list}
           for name, ref in reference_runs(profile).items()}
    one = next(n for n, (ds, model, mom) in REFERENCE_RUNS.items()
               if ds == p["dataset"] and model == p["model"] and mom == 0.0)
    out[one] = {**out[one], **eps_sweep_runs(profile)}
    out[one] = dict(sorted(out[one].items()))
    return out


def equal_lr_seed_runs(profile: dict) -> dict[str, list[tuple[RunConfig, RunConfig]]]:
    """The equal-lr pairs of :func:`equal_lr_runs` at every seed of ``perturbation.equal_lr.seeds`` (default: the
    profile's seed) for the dataset labels in ``perturbation.equal_lr.seed_datasets`` (default: both); other
    datasets keep the profile's seed only. A seed is a full replicate: batches, initialisation and the random
    directions all change, and both stage-1 runs are recomputed (spectrum at the final step only)."""
    import dataclasses

    base = equal_lr_runs(profile)
    if not base:
        return {}
    spec = profile["perturbation"]["equal_lr"]
    seeds = [int(x) for x in spec.get("seeds", [profile["seed"]])]
    seeded = spec.get("seed_datasets", list(base))
    out = {}
    for label, pair in base.items():
        out[label] = [pair]
        for seed in seeds if label in seeded else []:
            if seed == pair[0].seed:
                continue
            new = []
            for run in pair:
                stage1 = dataclasses.replace(run.stage1(), seed=seed, tangent_steps=(run.steps,), snapshot_steps=())
                new.append(dataclasses.replace(stage1, perturb_eps=run.perturb_eps, perturb_strategies=STRATEGIES,
                                               eval_every=run.eval_every))
            out[label].append(tuple(new))
    return out
