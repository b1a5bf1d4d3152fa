"""Tests for chaosnb.config: the run hash (stable, canonical, sensitive to every field) and validation."""

from __future__ import annotations

import dataclasses
import json

import pytest

from chaosnb import cli
from chaosnb.config import ConfigError, RunConfig
from chaosnb.perturb import STRATEGIES

# Every field given explicitly, so the pinned hash depends only on the schema and its serialisation.
PINNED = dict(dataset="usps", model="mlp", activation="relu", optimizer="sgd", lr=0.01, momentum=0.0,
              batch_size=8, steps=100, seed=42, dtype="float32", prune_set="chaotic", prune_k=None,
              prune_select="top_abs", prune_start=0, prune_noise_std=0.0, spectrum_method="lowrank",
              spectrum_rtol=1e-5, spectrum_every=0, tangent_steps=(10, 100), snapshot_steps=(10,),
              lyapunov_tol=1e-12, eval_every=0, perturb_eps=0.0, perturb_strategies=(), distance_every=1)
# Any change to these (fields added, renamed or retyped, the canonical JSON form, SCHEMA, or for DEFAULT_HASH a
# default value) must be deliberate: every stored result is addressed by its hash.
PINNED_HASH = "7529c7a72f0fccdd"
DEFAULT_HASH = "dc681e71864cca07"

BASE = RunConfig(**PINNED)
BASE_PERTURB = dataclasses.replace(BASE, perturb_eps=0.1, perturb_strategies=("random",))

# field -> (base configuration, a valid alternative value)
ALTERNATIVES = {
    "dataset": (BASE, "fashion_mnist"),
    "model": (BASE, "cnn"),
    "activation": (BASE, "tanh"),
    "optimizer": (BASE, "cgd"),
    "lr": (BASE, 0.02),
    "momentum": (BASE, 0.9),
    "batch_size": (BASE, 16),
    "steps": (BASE, 200),
    "seed": (BASE, 43),
    "dtype": (BASE, "float64"),
    "prune_set": (BASE, "neg"),
    "prune_k": (BASE, 5),
    "prune_select": (BASE, "rand"),
    "prune_start": (BASE, 3),
    "prune_noise_std": (BASE, 0.1),
    "spectrum_method": (BASE, "dense"),
    "spectrum_rtol": (BASE, 1e-6),
    "spectrum_every": (BASE, 10),
    "tangent_steps": (BASE, (10, 50, 100)),
    "snapshot_steps": (BASE, (10, 100)),
    "lyapunov_tol": (BASE, 1e-10),
    "eval_every": (BASE, 25),
    "perturb_eps": (BASE_PERTURB, 0.2),
    "perturb_strategies": (BASE_PERTURB, ("random", "chaotic")),
    "distance_every": (BASE, 2),
    "device": (BASE, "cuda"),  # "cpu" is left out of the hash (tests/test_device.py)
    "tangent_dtype": (BASE, "float32"),
}


# ---------------------------------------------------------------------------------------------- the hash
def test_pinned_hash():
    assert BASE.run_hash() == PINNED_HASH
    assert RunConfig().run_hash() == DEFAULT_HASH
    assert len(PINNED_HASH) == 16 and int(PINNED_HASH, 16) >= 0


def test_equal_configs_hash_equally():
    again = RunConfig(**PINNED)
    assert again == BASE and again.run_hash() == BASE.run_hash()
    # JSON round trip (the form written to config.json)
    restored = RunConfig.from_dict(json.loads(json.dumps(BASE.to_dict())))
    assert restored == BASE and restored.run_hash() == PINNED_HASH
    assert isinstance(BASE.to_dict()["tangent_steps"], list)
    # lists vs tuples, order and duplicates of step lists
    as_lists = RunConfig(**{**PINNED, "tangent_steps": [100, 10, 10], "snapshot_steps": [10]})
    assert as_lists.tangent_steps == (10, 100) and as_lists.run_hash() == PINNED_HASH
    # ints where floats are expected (YAML's `momentum: 0`, `lr: 1`) are the same run
    assert RunConfig(**{**PINNED, "momentum": 0, "prune_noise_std": 0}).run_hash() == PINNED_HASH
    assert RunConfig(lr=1).run_hash() == RunConfig(lr=1.0).run_hash()
    assert RunConfig(momentum=0).run_hash() == RunConfig().run_hash() == DEFAULT_HASH
    # dataset aliases are canonicalised
    assert RunConfig(**{**PINNED, "dataset": "USPS"}).run_hash() == PINNED_HASH
    fm = RunConfig(dataset="fashion_mnist")
    assert RunConfig(dataset="fmnist").run_hash() == RunConfig(dataset="Fashion-MNIST").run_hash() == fm.run_hash()
    # perturbation strategies given as a list
    pert = dataclasses.replace(BASE_PERTURB, perturb_strategies=["random"])
    assert pert == BASE_PERTURB and pert.run_hash() == BASE_PERTURB.run_hash()


def test_alternatives_cover_every_field():
    assert set(ALTERNATIVES) == {f.name for f in dataclasses.fields(RunConfig)}


@pytest.mark.parametrize("name", sorted(ALTERNATIVES))
def test_every_field_changes_the_hash(name):
    base, value = ALTERNATIVES[name]
    changed = dataclasses.replace(base, **{name: value})
    assert getattr(changed, name) != getattr(base, name)
    assert changed != base
    assert changed.run_hash() != base.run_hash()
    assert RunConfig.from_dict(changed.to_dict()).run_hash() == changed.run_hash()


def test_all_hashes_distinct():
    hashes = [dataclasses.replace(b, **{n: v}).run_hash() for n, (b, v) in ALTERNATIVES.items()]
    hashes += [BASE.run_hash(), BASE_PERTURB.run_hash()]
    assert len(set(hashes)) == len(hashes)


def test_stage1_of_perturbation_run():
    cfg = RunConfig(model="cnn", steps=20, perturb_eps=0.1, perturb_strategies=STRATEGIES, tangent_steps=(5,),
                    distance_every=4)
    s1 = cfg.stage1()
    assert not s1.is_perturbation and s1.tangent_steps == (5, 20) and s1.uses_tangent_map
    assert not cfg.uses_tangent_map
    assert s1.run_hash() != cfg.run_hash()


# ---------------------------------------------------------------------------------------------- validation
INVALID = [
    ("dataset", dict(dataset="cifar")),
    ("model", dict(model="resnet")),
    ("activation", dict(activation="gelu")),
    ("optimizer", dict(optimizer="adam")),
    ("prune_set", dict(optimizer="cgd", prune_set="zero")),
    ("prune_select", dict(prune_select="bottom")),
    ("spectrum_method", dict(spectrum_method="lanczos")),
    ("dtype", dict(dtype="float16")),
    ("steps", dict(steps=0)),
    ("steps", dict(steps=2.5)),
    ("batch_size", dict(batch_size=-1)),
    ("lr", dict(lr=-0.1)),
    ("lr", dict(lr=0)),
    ("lr", dict(lr="fast")),
    ("momentum", dict(momentum=1.0)),
    ("momentum", dict(momentum=-0.1)),
    ("momentum", dict(momentum="x")),
    ("seed", dict(seed=-1)),
    ("seed", dict(seed="42")),
    ("prune_k", dict(prune_k=0)),
    ("prune_noise_std", dict(prune_noise_std=-1.0)),
    ("spectrum_rtol", dict(spectrum_rtol=-1e-5)),
    ("tangent_dtype", dict(tangent_dtype="float16")),
    ("tangent_dtype", dict(tangent_dtype="float32", momentum=0.9, tangent_steps=(10,))),
    ("eval_every", dict(eval_every=-5)),
    ("distance_every", dict(distance_every=0)),
    ("snapshot_steps", dict(steps=10, tangent_steps=(5,), snapshot_steps=(3,))),
    ("tangent_steps", dict(steps=10, tangent_steps=(11,))),
    ("tangent_steps", dict(steps=10, tangent_steps=(0,))),
    ("perturb_strategies", dict(perturb_eps=0.1)),
    ("perturb_eps", dict(perturb_strategies=("random",))),
    ("perturb_strategies", dict(perturb_eps=0.1, perturb_strategies=("sideways",))),
    ("perturb_eps", dict(perturb_eps=-0.1, perturb_strategies=("random",))),
    ("perturb_eps", dict(perturb_eps="big", perturb_strategies=("random",))),
    ("optimizer", dict(optimizer="cgd", perturb_eps=0.1, perturb_strategies=("random",))),
]


@pytest.mark.parametrize(("field", "kwargs"), INVALID, ids=[f"{f}-{i}" for i, (f, _) in enumerate(INVALID)])
def test_invalid_config_names_the_field(field, kwargs):
    with pytest.raises(ConfigError) as info:
        RunConfig(**kwargs)
    assert field in str(info.value)
    with pytest.raises(ConfigError):  # the same through from_dict (config files)
        RunConfig.from_dict(kwargs)


def test_choice_errors_list_valid_values():
    with pytest.raises(ConfigError, match=r"^dataset: .*cifar.*usps.*fashion_mnist"):
        RunConfig(dataset="cifar")
    with pytest.raises(ConfigError, match=r"^optimizer: .*'adam'.*sgd, cgd"):
        RunConfig(optimizer="adam")


def test_unknown_field_in_from_dict():
    with pytest.raises(ConfigError, match="learning_rate") as info:
        RunConfig.from_dict({"learning_rate": 0.1, "steps": 10})
    assert "lr" in str(info.value)  # lists the valid fields


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        BASE.lr = 1.0  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------- the CLI
def test_cli_run_rejects_unknown_dataset(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CHAOSNB_RESULTS", str(tmp_path))
    assert cli.main(["run", "--dataset", "cifar", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "dataset" in err and "cifar" in err
    assert not any(tmp_path.iterdir())  # nothing was started


@pytest.mark.parametrize(("args", "field"), [(["--momentum", "1.0"], "momentum"), (["--steps", "0"], "steps"),
                                             (["--steps", "10", "--tangent-steps", "5,20"], "tangent_steps")])
def test_cli_run_rejects_invalid_values(capsys, tmp_path, monkeypatch, args, field):
    monkeypatch.setenv("CHAOSNB_RESULTS", str(tmp_path))
    assert cli.main(["run", "--quiet", *args]) == 2
    assert field in capsys.readouterr().err


def test_cli_run_rejects_unknown_field_in_file(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CHAOSNB_RESULTS", str(tmp_path / "results"))
    path = tmp_path / "run.yaml"
    path.write_text("steps: 10\nlearning_rate: 0.1\n")
    assert cli.main(["run", "--quiet", "--config", str(path)]) == 2
    assert "learning_rate" in capsys.readouterr().err
