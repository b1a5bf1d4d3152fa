"""The experiment catalogue: every profile yields valid, distinct runs whose stages fit together."""

import dataclasses

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


def test_c13_sgd_run_is_the_usps_momentum_reference_run_where_their_horizons_agree(profile):
    """C.1.3's SGD run is not computed twice: where its steps and points equal the USPS MLP momentum reference
    run's (the smoke and quick profiles), it is that run; elsewhere it differs from it in the horizon only."""
    sgd = E.lyapunov_pruning_runs(profile)["sgd"]
    reference = E.reference_runs(profile)["USPS MLP, momentum"]
    if (sgd.steps, sgd.tangent_steps) == (reference.steps, reference.tangent_steps):
        assert sgd == reference and sgd.run_hash() == reference.run_hash()
    else:
        assert dataclasses.replace(sgd, steps=reference.steps, tangent_steps=reference.tangent_steps,
                                   snapshot_steps=reference.snapshot_steps) == reference
    assert set(sgd.snapshot_steps) <= set(sgd.tangent_steps)
    assert all(c.snapshot_steps == () for name, c in E.lyapunov_pruning_runs(profile).items() if name != "sgd")


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


def test_seeds_pair_the_runs_of_one_seed(profile):
    """Every MLP pruning panel, Figure 2 and the B.2 MLP runs get the profile's seeds; the CNN runs one seed; the
    runs of one seed share seed (initialisation and batches), so CGD and SGD pair up."""
    n = profile["pruning"]["seeds"]
    seeds = tuple(profile["seed"] + i for i in range(n))
    assert E.seeds_for(profile, "pruning") == seeds and seeds[0] == profile["seed"]
    for panel, (_, model, _) in E.PRUNING_PANELS.items():
        by_seed = E.pruning_seed_runs(profile, panel)
        assert tuple(by_seed) == (seeds if model == "mlp" else seeds[:1])
        assert by_seed[profile["seed"]] == E.pruning_runs(profile, panel)  # the first seed = the single-seed runs
        for seed, runs in by_seed.items():
            assert {c.seed for c in runs.values()} == {seed}
    assert all(len(v) == (profile["eigen"]["seeds"] if E.EIGEN_RUNS[k][1] == "mlp" else 1)
               for k, v in E.eigen_seed_runs(profile).items())
    assert len(E.pruning_start_seed_runs(profile)) == profile["pruning_start"]["seeds"]
    hashes = {c.run_hash() for c in E.all_configs(profile)}
    assert all(c.run_hash() in hashes for runs in E.pruning_start_seed_runs(profile).values() for c in runs.values())


def test_seed_counts_follow_the_issue():
    assert [E.load_profile(p)["pruning"]["seeds"] for p in ("quick", "paper")] == [3, 5]
    with pytest.raises(ValueError, match="pruning.seeds: must be a positive integer"):
        E.seeds_for(E.load_profile("quick", {"pruning": {"seeds": 0}}), "pruning")


def test_paper_numerics_runs_use_the_authors_numerics(profile):
    runs = E.paper_numerics_runs(profile)
    assert set(runs) == {"B.2.2", "Figure 1 chaotic", "Figure 1 neg", "C.1.2", "C.1.2 exact"}
    for name in ("B.2.2", "Figure 1 chaotic", "Figure 1 neg", "C.1.2"):
        c = runs[name]
        assert (c.spectrum_method, c.spectrum_rtol, c.dtype) == ("dense", 0.0, "float32")
    assert runs["C.1.2"].tangent_dtype == "float32" and runs["C.1.2 exact"].tangent_dtype == "float64"
    assert runs["C.1.2"].tangent_steps == runs["C.1.2 exact"].tangent_steps
    # the same trajectory as the exact runs: only the numerics (and the horizon / cadence) differ
    eigen = E.eigen_runs(profile)["USPS MLP sigmoid" if profile["paper_numerics"]["model"] == "mlp" else "USPS CNN"]
    assert dataclasses.replace(runs["B.2.2"], spectrum_method=eigen.spectrum_method, spectrum_rtol=eigen.spectrum_rtol,
                               spectrum_every=eigen.spectrum_every) == eigen
    assert runs["B.2.2"].spectrum_every % eigen.spectrum_every == 0
    assert runs["Figure 1 chaotic"].prune_set == "chaotic" and runs["Figure 1 neg"].prune_set == "neg"
    with pytest.raises(ValueError, match="multiple of eigen.spectrum_every"):
        E.paper_numerics_runs(E.load_profile(profile["name"], {"eigen": {"spectrum_every": 10},
                                                               "paper_numerics": {"b22_every": 7}}))


def test_new_fields_keep_the_stored_hashes():
    """tangent_dtype is left out of the hash at its default, so every run stored before it keeps its directory."""
    from chaosnb.config import RunConfig

    assert "tangent_dtype" not in RunConfig().to_dict()
    assert RunConfig(tangent_dtype="float32", tangent_steps=(5,), steps=5).to_dict()["tangent_dtype"] == "float32"
