"""The experiment catalogue: every profile yields valid, distinct runs whose stages fit together."""

import pytest

from chaosnb import experiments as E


@pytest.fixture(params=E.profile_names())
def profile(request):
    return E.load_profile(request.param)


def test_catalogue_is_valid_and_deduplicated(profile):
    configs = E.all_configs(profile)
    hashes = [c.run_hash() for c in configs]
    assert len(hashes) == len(set(hashes))
    # every perturbation run's stage 1 is in the catalogue and comes before it
    position = {h: i for i, h in enumerate(hashes)}
    for i, c in enumerate(configs):
        if c.is_perturbation:
            assert position[c.stage1().run_hash()] < i


def test_reference_runs_are_the_perturbation_stage1_runs(profile):
    """The tangent-map runs of C.1/C.2 are not computed twice: they are stage 1 of the distance runs."""
    reference = E.reference_runs(profile)
    for eps in (profile["perturbation"]["eps_main"], profile["perturbation"]["eps_large"]):
        for name, run in E.perturbation_runs(profile, eps).items():
            if run.steps == reference[name].steps:
                assert run.stage1() == reference[name]


def test_reference_snapshots_have_later_tangent_steps(profile):
    for cfg in E.reference_runs(profile).values():
        assert set(cfg.snapshot_steps) <= set(cfg.tangent_steps) and cfg.steps in cfg.tangent_steps
        if len(cfg.snapshot_steps) == 2:
            first, mid = cfg.snapshot_steps
            assert first < mid <= cfg.steps // 2 and max(cfg.tangent_steps) > mid


@pytest.mark.parametrize(("schedule", "steps", "first", "expected"), [
    ((10, 24, 60), 60, 10, (10, 24)),
    ((10, 60), 60, 10, (10,)),
    ((10, 14, 20, 27, 38, 53, 75, 105, 146, 205, 286, 400), 400, 10, (10, 146)),
    ((2, 4), 4, 2, (2,)),
    ((5,), 5, 5, (5,)),
])
def test_snapshot_schedule(schedule, steps, first, expected):
    assert E.snapshot_schedule(schedule, steps, first) == expected


def test_profile_overrides_merge_key_by_key():
    p = E.load_profile("quick", {"pruning": {"mlp_steps": 7}})
    assert p["pruning"]["mlp_steps"] == 7
    assert p["pruning"]["cnn_steps"] == E.load_profile("quick")["pruning"]["cnn_steps"]
    assert all(c.steps == 7 for c in E.pruning_runs(p, "fig1").values())


def test_unknown_profile_and_bad_steps_are_clear_errors():
    with pytest.raises(ValueError, match="unknown profile 'fast'.*smoke"):
        E.load_profile("fast")
    with pytest.raises(ValueError, match="<n> epochs"):
        E.steps_for("3 weeks", "usps", 8)
    assert E.steps_for("40 epochs", "usps", 8) == 36480
