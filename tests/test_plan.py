"""Tests for chaosnb.plan. The spectrum counts are checked against RunConfig.needs_spectrum step by step.
The totals are checked as sums and maxima of the rows. Per-run times are checked to scale with the steps,
the memory against the N^2 * 8 formula, and the `chaosnb plan` command is run."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from chaosnb import cli
from chaosnb.config import RunConfig
from chaosnb.experiments import all_configs, load_profile, reference_runs
from chaosnb.plan import (
    RATES,
    ftle_path,
    ftle_seconds,
    num_params,
    plan,
    plan_profile,
    priorities,
    reorthonormalisations,
    run_cost,
    simulate_schedule,
    spectrum_steps,
)

SMOKE = all_configs(load_profile("smoke"))
HANDMADE = [
    RunConfig(steps=37, spectrum_every=5),
    RunConfig(steps=37, optimizer="cgd", prune_start=12, spectrum_every=5),
    RunConfig(steps=37, optimizer="cgd", prune_start=40, spectrum_every=7),
    RunConfig(steps=37, optimizer="cgd", prune_start=0),
    RunConfig(steps=37, tangent_steps=(5, 37), spectrum_every=10),
    RunConfig(steps=37, tangent_steps=(37,), perturb_eps=0.1, perturb_strategies=("random", "chaotic")),
    RunConfig(steps=37),
]


@pytest.mark.parametrize("config", SMOKE + HANDMADE, ids=lambda c: c.run_hash())
def test_spectrum_steps_match_needs_spectrum(config):
    assert spectrum_steps(config) == sum(config.needs_spectrum(t) for t in range(config.steps))


def test_proportional_cases_cover_every_kind():
    kinds = {(c.model, c.optimizer, c.uses_tangent_map, c.is_perturbation) for c in PROPORTIONAL}
    assert {("mlp", "cgd", False, False), ("cnn", "cgd", False, False), ("mlp", "sgd", True, False),
            ("cnn", "sgd", True, False), ("mlp", "sgd", False, True), ("cnn", "sgd", False, True)} <= kinds


def test_model_sizes():
    assert (num_params("mlp"), num_params("cnn")) == (5350, 1158)


def test_totals_are_the_rows_sums_and_maxima():
    p = plan_profile("smoke")
    assert [r.config for r in p.runs] == list(dict.fromkeys(SMOKE))
    assert math.isclose(p.total_seconds, sum(r.seconds for r in p.runs))
    assert math.isclose(p.cpu_hours, p.total_seconds / 3600)
    assert p.largest.seconds == max(r.seconds for r in p.runs)
    assert p.peak_bytes == max(r.peak_bytes for r in p.runs)
    chains = [r.seconds + (run_cost(r.config.stage1()).seconds if r.config.is_perturbation else 0) for r in p.runs]
    assert math.isclose(p.critical_path_seconds, max(chains))
    for workers in (1, 3, 1000):
        assert math.isclose(p.wall_seconds_at_least(workers), max(p.total_seconds / workers, max(chains)))
    assert all(r.seconds > 0 and r.peak_bytes >= r.tangent_bytes >= 0 for r in p.runs)
    with pytest.raises(ValueError, match="nothing to plan"):
        plan([])


def test_reference_run_cost_by_hand():
    """A reference run with the tangent map: steps * tangent + its finite-time spectra (the sgd and spectrum terms
    of the formula telescope into the tangent rate); every spectrum of these runs needs eigenvectors (C.2.1's
    snapshot comes first), each costed by its path."""
    for name, config in reference_runs(load_profile("paper")).items():
        r = RATES[config.model]
        factor = r["momentum"] if config.momentum else 1.0
        spectra = sum(r["ftle"][ftle_path(config, s)] for s in config.tangent_steps)
        assert all(config.needs_lyapunov_vectors(s) for s in config.tangent_steps)
        kind = "momentum" if config.momentum else "plain"
        reorth = int(config.steps * config.lr / r["reorth_lr_steps"][kind]) * r["reorth"][kind]
        assert reorth > 0  # 36,480 steps at lr 1e-3: ~98 re-orthonormalisations (~36 with momentum)
        expected = config.steps * r["tangent"][config.spectrum_method] * factor + spectra + reorth
        assert math.isclose(run_cost(config).seconds, expected, rel_tol=1e-12), name
    usps_mlp = reference_runs(load_profile("paper"))["USPS MLP"]
    assert usps_mlp.steps == 36480 and len(usps_mlp.tangent_steps) == 40


# runs whose spectrum count is proportional to the steps (every step or none; the others are covered by
# test_spectrum_steps_match_needs_spectrum)
PROPORTIONAL = [c for c in SMOKE if not (c.spectrum_every or c.prune_start)]


@pytest.mark.parametrize("config", PROPORTIONAL, ids=lambda c: c.run_hash())
def test_time_scales_with_steps(config):
    """Ten times the steps: ten times the per-step part (everything but the finite-time spectra)."""
    longer = dataclasses.replace(config, steps=10 * config.steps)
    a, b = run_cost(config), run_cost(longer)
    fixed_a = ftle_seconds(config) if a.ftle else 0.0
    fixed_b = ftle_seconds(longer) if b.ftle else 0.0
    if config.uses_tangent_map:  # re-orthonormalisations: a whole number per run, not proportional
        rr = RATES[config.model]["reorth"]["momentum" if config.momentum else "plain"]
        fixed_a += reorthonormalisations(config) * rr
        fixed_b += reorthonormalisations(longer) * rr
    assert b.ftle == a.ftle and b.spectra == 10 * a.spectra
    assert math.isclose(b.seconds - fixed_b, 10 * (a.seconds - fixed_a), rel_tol=1e-12)
    assert (b.tangent_bytes, b.peak_bytes) == (a.tangent_bytes, a.peak_bytes)


def test_memory_formula():
    for config in all_configs(load_profile("paper")):
        cost, n = run_cost(config), num_params(config.model)
        if config.uses_tangent_map:
            assert cost.tangent_bytes == n * n * 8 * (2 if config.momentum else 1)
            assert cost.peak_bytes >= cost.tangent_bytes + 3 * n * n * 8
        else:
            assert cost.tangent_bytes == 0
    mlp = reference_runs(load_profile("paper"))
    assert run_cost(mlp["USPS MLP"]).tangent_bytes == 228_980_000  # 229 MB
    assert run_cost(mlp["USPS MLP, momentum"]).tangent_bytes == 2 * 228_980_000


def test_cli_plan(capsys):
    assert cli.main(["plan", "--profile", "smoke", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert all(c.run_hash() in out for c in SMOKE)
    assert "CPU-hours" in out and "largest run" in out and "W=2:" in out
    assert cli.main(["plan", "--profile", "smoke", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["runs"]) == len(set(SMOKE))
    assert math.isclose(data["total_seconds"], sum(r["seconds"] for r in data["runs"]))
    assert cli.main(["plan", "--profile", "paper"]) == 0
    out = capsys.readouterr().out
    assert f"runs: {len(set(all_configs(load_profile('paper'))))}" in out and "458MB" in out
    assert cli.main(["plan", "--profile", "nope"]) == 2
    assert "unknown profile 'nope'" in capsys.readouterr().err


def test_sweep_dry_run_lists_the_runs_and_computes_nothing(tmp_path, monkeypatch, capsys):
    """``chaosnb sweep --dry-run``: the plan of the file's runs plus the stage-1 runs of its perturbation runs, and
    the results store is not even created."""
    import json

    from chaosnb import cli
    from chaosnb.config import RunConfig

    store = tmp_path / "results"
    monkeypatch.setenv("CHAOSNB_RESULTS", str(store))
    sgd = RunConfig(steps=100)
    pert = RunConfig(steps=50, tangent_steps=(50,), perturb_eps=0.1, perturb_strategies=("random",))
    spec = tmp_path / "sweep.json"
    spec.write_text(json.dumps([sgd.to_dict(), pert.to_dict()]))
    assert cli.main(["sweep", str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for config in (sgd, pert, pert.stage1()):
        assert config.run_hash() in out
    assert "runs: 3" in out and "CPU-hours" in out
    assert not store.exists()


def test_schedule_simulation_by_hand():
    """Three runs and a perturbation run that waits for its stage-1 run, on 1, 2 and 3 workers."""
    stage1 = RunConfig(steps=10, tangent_steps=(10,))
    pert = RunConfig(steps=10, tangent_steps=(10,), perturb_eps=0.1, perturb_strategies=("random",))
    a, b = RunConfig(steps=11), RunConfig(steps=12)
    assert pert.stage1() == stage1
    costs = {stage1: 5.0, pert: 4.0, a: 6.0, b: 3.0}
    order = {stage1: 9.0, pert: 4.0, a: 6.0, b: 3.0}  # what priorities() gives for these costs
    assert simulate_schedule(costs, order, 1) == 18.0
    # 2 workers: w1 stage1 [0,5] then pert [5,9]; w2 a [0,6] then b [6,9]
    assert simulate_schedule(costs, order, 2) == 9.0
    # 3 workers: b starts at 0 on the third; pert still waits for stage1 (5 + 4)
    assert simulate_schedule(costs, order, 3) == 9.0
    # the wrong order (stage-1 last) costs time: 2 workers, a and b first, then stage1, then pert
    assert simulate_schedule(costs, {stage1: 1.0, pert: 0.0, a: 6.0, b: 3.0}, 2) == 3.0 + 5.0 + 4.0
    with pytest.raises(ValueError, match="workers"):
        simulate_schedule(costs, order, 0)


def test_priorities_put_chains_first():
    p = plan_profile("smoke")
    prio = priorities([r.config for r in p.runs])
    for r in p.runs:
        assert prio[r.config] >= r.seconds
        if r.config.is_perturbation:
            assert prio[r.config.stage1()] >= r.seconds + run_cost(r.config.stage1()).seconds - 1e-9
    for workers in (1, 2, 8):
        wall = p.scheduled_wall_seconds(workers)
        assert wall >= p.wall_seconds_at_least(workers) - 1e-9
        assert wall <= p.total_seconds + 1e-9
    assert math.isclose(p.scheduled_wall_seconds(1), p.total_seconds)
    assert math.isclose(p.scheduled_wall_seconds(10_000), p.critical_path_seconds)


def test_finite_time_spectra_are_costed_by_path_and_by_what_they_need():
    """lr 1e-2, no momentum: the exponents spread 6 x lr x t nats, so t = 10 takes the Gram path (0.6 nats), t = 200
    one SVD (12), t = 500 the graded path (30). Without a snapshot only the last step needs eigenvectors."""
    r = RATES["mlp"]
    config = RunConfig(steps=500, lr=1e-2, tangent_steps=(10, 200, 500))
    assert [ftle_path(config, s) for s in config.tangent_steps] == ["gram", "full", "graded"]
    f = r["ftle"]
    assert math.isclose(ftle_seconds(config), f["gram_values"] + f["full_values"] + f["graded"])
    snap = dataclasses.replace(config, snapshot_steps=(10,))  # C.2.1: eigenvectors from the snapshot on
    assert math.isclose(ftle_seconds(snap), f["gram"] + f["full"] + f["graded"])
    momentum = dataclasses.replace(config, momentum=0.9)  # 7.7 x lr x t: t = 200 is 15.4 nats, still one SVD
    assert ftle_path(momentum, 200) == "full" and ftle_path(momentum, 300) == "graded"
