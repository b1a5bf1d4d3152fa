"""Tests for chaosnb.runs: the results store (cache, reproducibility, resume after kill, corruption, divergence,
parallel sweeps, perturbation runs, listing) and the ``chaosnb run`` / ``chaosnb runs`` commands."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from chaosnb import __version__, cli, runs
from chaosnb.config import RunConfig
from chaosnb.data import load_dataset, sampler_for
from chaosnb.models import make_flat_model
from chaosnb.perturb import STRATEGIES
from chaosnb.runs import get, get_many, is_done, list_runs, load_result, run_dir, sweep

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("data_root", "one_thread")

# cheap runs: the MLP without spectra (~1 ms a step), the CNN only where the Hessian is needed
MLP = RunConfig(steps=30, lr=0.05, batch_size=8, eval_every=10)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: the machine's few cores are shared, and this keeps the numbers comparable with the
    subprocesses (started with OMP_NUM_THREADS=1) and the sweep workers (which set one thread)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """A fresh results store, also as $CHAOSNB_RESULTS (for the CLI); no progress bars."""
    path = tmp_path / "results"
    monkeypatch.setenv("CHAOSNB_RESULTS", str(path))
    monkeypatch.setenv("CHAOSNB_PROGRESS", "0")
    return path


def assert_same_numbers(a, b) -> None:
    """Bitwise-identical metrics and arrays (NaNs in the same places), same status."""
    assert (a.status, a.steps_done, a.diverged_at) == (b.status, b.steps_done, b.diverged_at)
    for name in ("metrics", "arrays"):
        x, y = getattr(a, name), getattr(b, name)
        assert sorted(x) == sorted(y), name
        for key in x:
            assert x[key].dtype == y[key].dtype and x[key].shape == y[key].shape, key
            assert np.array_equal(x[key], y[key], equal_nan=True), key


def forbid_computing(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("the run was computed again instead of read from the store")

    monkeypatch.setattr(runs, "_compute", fail)
    monkeypatch.setattr(runs.Training, "advance", fail)


# ---------------------------------------------------------------------------------------------- cache
def test_cache_hit_reads_without_computing(root, monkeypatch):
    first = get(MLP, root)
    directory = run_dir(MLP, root)
    assert directory == root / MLP.run_hash()
    assert {p.name for p in directory.iterdir() if not p.name.startswith(".")} == {
        "config.json", "metrics.npz", "arrays.npz", "DONE"}  # the checkpoint is removed when done
    assert first.status == "done" and first.steps_done == MLP.steps
    steps, loss = first.series("train_loss")
    assert np.array_equal(steps, np.arange(MLP.steps)) and np.isfinite(loss).all()
    assert np.array_equal(first.series("val_loss")[0], [0, 10, 20, 30])
    with pytest.raises(KeyError, match="train_loss"):
        first.series("no_such_metric")
    mtimes = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}

    forbid_computing(monkeypatch)
    second = get(MLP, root)
    assert_same_numbers(first, second)
    assert second.config == MLP
    assert second.meta == {"models": ["model"], "data_fingerprint": load_dataset(MLP.dataset).fingerprint}
    assert get_many([MLP, MLP], root)[1].status == "done"
    assert is_done(MLP, root)
    assert {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} == mtimes


def test_recompute_discards_the_cache(root, monkeypatch):
    first = get(MLP, root)
    calls = []
    original = runs._compute
    monkeypatch.setattr(runs, "_compute", lambda *a, **k: calls.append(1) or original(*a, **k))
    again = get(MLP, root, recompute=True)
    assert calls == [1]
    assert_same_numbers(first, again)
    assert_same_numbers(again, load_result(run_dir(MLP, root)))


# ---------------------------------------------------------------------------------------------- seeds
def test_same_seed_same_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("CHAOSNB_PROGRESS", "0")
    cfg = dataclasses.replace(MLP, momentum=0.5)
    a, b = get(cfg, tmp_path / "a"), get(cfg, tmp_path / "b")
    assert_same_numbers(a, b)
    assert_same_numbers(a, load_result(run_dir(cfg, tmp_path / "b")))
    other = get(dataclasses.replace(cfg, seed=cfg.seed + 1), tmp_path / "a")
    assert not np.array_equal(other.metrics["train_loss"], a.metrics["train_loss"])

    recorded = json.loads((run_dir(cfg, tmp_path / "a") / "config.json").read_text())
    assert recorded["seed"] == cfg.seed == recorded["config"]["seed"]
    assert recorded["config"] == cfg.to_dict() and RunConfig.from_dict(recorded["config"]) == cfg
    assert recorded["hash"] == cfg.run_hash()
    assert recorded["chaosnb_version"] == __version__
    assert recorded["torch_version"] == torch.__version__
    done = json.loads((run_dir(cfg, tmp_path / "a") / "DONE").read_text())
    assert done["status"] == "done" and done["steps_done"] == cfg.steps and set(done["sha256"]) == {
        "metrics.npz", "arrays.npz", "config.json"}
    fingerprint = load_dataset(cfg.dataset).fingerprint
    assert recorded["data_fingerprint"] == done["data_fingerprint"] == fingerprint and recorded["torch_threads"] == 1


# ---------------------------------------------------------------------------------------------- resume
RESUME_SCRIPT = """
import json, sys, time
from pathlib import Path
from chaosnb.config import RunConfig
from chaosnb.runs import get
from chaosnb.train import Training
config = RunConfig.from_dict(json.loads(sys.argv[1]))
advance = Training.advance
Training.advance = lambda self: (time.sleep(0.005), advance(self))[1]  # slower steps: the kill lands mid-run
get(config, Path(sys.argv[2]), checkpoint_every=int(sys.argv[3]), progress=False)
print("FINISHED")
"""


def test_resume_after_sigkill(tmp_path, monkeypatch):
    """A real process computing a run is killed with SIGKILL after its first checkpoint; the run started again
    resumes from that checkpoint and ends with exactly the numbers of an uninterrupted run."""
    monkeypatch.setenv("CHAOSNB_PROGRESS", "0")
    cfg = RunConfig(steps=400, lr=0.05, momentum=0.9, batch_size=8, eval_every=100, seed=7)
    root, every = tmp_path / "killed", 20
    directory = run_dir(cfg, root)
    checkpoint = directory / "checkpoint.pt"

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "PYTHONWARNINGS": "ignore"}
    log = tmp_path / "killed.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-c", RESUME_SCRIPT, json.dumps(cfg.to_dict()), str(root),
                                 str(every)], cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not checkpoint.exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert "FINISHED" not in log.read_text()
    assert not (directory / "DONE").exists() and load_result(directory) is None
    assert (directory / "config.json").exists()
    saved = runs.read_checkpoint(checkpoint)
    assert saved["hash"] == cfg.run_hash()
    killed_at = saved["training"]["step"]
    assert 0 < killed_at < cfg.steps and killed_at % every == 0
    assert [(row["status"], row["steps_done"]) for row in list_runs(root)] == [("partial", killed_at)]

    # start it again, to completion, and check that it resumed from the checkpoint
    loaded, advanced = [], []
    load_state_dict, advance = runs.Training.load_state_dict, runs.Training.advance
    monkeypatch.setattr(runs.Training, "load_state_dict",
                        lambda self, state: (loaded.append(state["step"]), load_state_dict(self, state))[1])
    monkeypatch.setattr(runs.Training, "advance", lambda self: (advanced.append(self.step), advance(self))[1])
    resumed = get(cfg, root, checkpoint_every=every)
    assert loaded == [killed_at] and advanced == list(range(killed_at, cfg.steps))
    assert not checkpoint.exists()
    assert_same_numbers(resumed, load_result(directory))
    monkeypatch.undo()

    uninterrupted = get(cfg, tmp_path / "reference", checkpoint_every=10_000, progress=False)
    assert_same_numbers(resumed, uninterrupted)
    assert resumed.steps_done == cfg.steps and resumed.status == "done"


def test_resume_in_process_cgd(tmp_path, monkeypatch):
    """Interrupted mid-run and resumed from the checkpoint: CGD with noise and momentum (optimizer state and the
    noise generator's state) continues bit-identically."""
    monkeypatch.setenv("CHAOSNB_PROGRESS", "0")
    cfg = RunConfig(optimizer="cgd", prune_set="chaotic", prune_noise_std=0.01, momentum=0.5, lr=0.05, steps=3)
    root = tmp_path / "interrupted"
    directory = run_dir(cfg, root)
    directory.mkdir(parents=True)
    assert runs._compute(cfg, directory, root, checkpoint_every=1, progress=False, stop_after=1) is None
    assert runs.read_checkpoint(directory / "checkpoint.pt")["training"]["step"] == 1
    resumed = get(cfg, root, checkpoint_every=1)
    reference = get(cfg, tmp_path / "reference", checkpoint_every=100)
    assert_same_numbers(resumed, reference)
    assert "n_pruned" in resumed.metrics


def test_resume_in_process_tangent_map(perturbation, tmp_path):
    """The tangent map, its snapshots and the stage-1 directions continue bit-identically after a resume."""
    stage1 = perturbation["config"].stage1()
    root = tmp_path / "interrupted"
    directory = run_dir(stage1, root)
    directory.mkdir(parents=True)
    assert runs._compute(stage1, directory, root, checkpoint_every=1, progress=False, stop_after=1) is None
    saved = runs.read_checkpoint(directory / "checkpoint.pt")["training"]
    assert saved["step"] == 1 and saved["tangent"]["t"] == 1 and 1 in saved["snapshots"]
    resumed = get(stage1, root, checkpoint_every=1, progress=False)
    assert_same_numbers(resumed, perturbation["stage1"])
    assert "overlap_from_1" in resumed.metrics and "ftle_max" in resumed.metrics


# ---------------------------------------------------------------------------------------------- corruption
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_json(name: str, edit):
    def apply(directory: Path) -> None:
        obj = json.loads((directory / name).read_text())
        edit(obj)
        (directory / name).write_text(json.dumps(obj))

    return apply


CORRUPTIONS = {
    "truncated-metrics": lambda d: _truncate(d / "metrics.npz"),
    "altered-arrays": lambda d: _flip_byte(d / "arrays.npz"),
    "deleted-metrics": lambda d: (d / "metrics.npz").unlink(),
    "truncated-DONE": lambda d: _truncate(d / "DONE"),
    "garbage-DONE": lambda d: (d / "DONE").write_text("garbage"),
    "DONE-wrong-checksum": _edit_json("DONE", lambda o: o["sha256"].update({"metrics.npz": "0" * 64})),
    "DONE-without-status": _edit_json("DONE", lambda o: o.pop("status")),
    "DONE-is-a-list": lambda d: (d / "DONE").write_text("[]"),
    "garbage-config": lambda d: (d / "config.json").write_text("{"),
    "config-of-another-run": _edit_json("config.json", lambda o: o["config"].update({"lr": 0.5})),
    "config-fingerprint-edited": _edit_json("config.json", lambda o: o.update(data_fingerprint="0" * 16)),
    "DONE-steps-edited": _edit_json("DONE", lambda o: o.update(steps_done=3)),
    "DONE-status-edited": _edit_json("DONE", lambda o: o.update(status="diverged", diverged_at=3)),
    "DONE-fingerprint-edited": _edit_json("DONE", lambda o: o.update(data_fingerprint="0" * 16)),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupted_result_is_recomputed(root, kind):
    clean = get(MLP, root)
    directory = run_dir(MLP, root)
    CORRUPTIONS[kind](directory)
    assert load_result(directory) is None
    assert not is_done(MLP, root)
    assert [row["status"] for row in list_runs(root)] == ["corrupt"]
    again = get(MLP, root)
    assert_same_numbers(clean, again)
    assert_same_numbers(clean, load_result(directory))
    assert [row["status"] for row in list_runs(root)] == ["done"]


@pytest.mark.parametrize("checkpoint", ["garbage", "other-run", "wrong-structure", "flipped-bytes", "other-data"])
def test_bad_checkpoint_restarts_from_zero_with_a_warning(tmp_path, monkeypatch, checkpoint):
    """A checkpoint that is damaged (four flipped bytes fail its sha256), foreign (another configuration or other
    data) or malformed is never loaded: the run restarts from step 0 with a warning and ends with clean numbers."""
    monkeypatch.setenv("CHAOSNB_PROGRESS", "0")
    root = tmp_path / "store"
    directory = run_dir(MLP, root)
    directory.mkdir(parents=True)
    fingerprint = load_dataset(MLP.dataset).fingerprint
    source = MLP if checkpoint in ("flipped-bytes", "other-data") else dataclasses.replace(MLP, seed=3)
    source_dir = directory if source == MLP else run_dir(source, root)
    source_dir.mkdir(parents=True, exist_ok=True)
    runs._compute(source, source_dir, root, checkpoint_every=5, progress=False, stop_after=10)
    path = directory / "checkpoint.pt"
    state = runs.read_checkpoint(source_dir / "checkpoint.pt")
    if checkpoint == "garbage":
        path.write_bytes(b"\x80\x02 this is not a checkpoint")
    elif checkpoint == "other-run":
        path.write_bytes(runs.checkpoint_bytes(source, state["training"], fingerprint))
    elif checkpoint == "wrong-structure":
        path.write_bytes(runs.checkpoint_bytes(MLP, {"step": 10, "params": []}, fingerprint))
    elif checkpoint == "other-data":
        path.write_bytes(runs.checkpoint_bytes(MLP, state["training"], "0" * 16))
    else:
        data = bytearray(path.read_bytes())
        for i in range(4):
            data[len(data) // 2 + 97 * i] ^= 0x10
        path.write_bytes(bytes(data))
    loaded = []
    load_state_dict = runs.Training.load_state_dict
    monkeypatch.setattr(runs.Training, "load_state_dict",
                        lambda self, st: (loaded.append(st["step"]), load_state_dict(self, st))[1])
    with pytest.warns(RuntimeWarning, match="restarting the run from step 0"):
        result = get(MLP, root)
    assert checkpoint == "wrong-structure" or loaded == []  # a malformed state fails inside load_state_dict
    monkeypatch.undo()
    assert_same_numbers(result, get(MLP, tmp_path / "clean"))
    assert not path.exists()


# ---------------------------------------------------------------------------------------------- divergence
DIVERGING = {
    "mlp-absurd-lr": RunConfig(lr=1e4, steps=50, eval_every=5),
    "cnn-cgd-pos": RunConfig(model="cnn", optimizer="cgd", prune_set="pos", lr=1e3, steps=20,
                             spectrum_method="dense"),
}


@pytest.mark.parametrize("name", sorted(DIVERGING))
def test_divergence_ends_cleanly_and_is_cached(root, monkeypatch, name):
    cfg = DIVERGING[name]
    result = get(cfg, root)  # must not raise
    assert result.status == "diverged" and result.diverged
    t = result.diverged_at
    assert t is not None and 0 < t < cfg.steps and result.steps_done == t
    steps, loss = result.series("train_loss")
    assert np.array_equal(steps, np.arange(t + 1))  # every step up to the diverging one
    assert np.isfinite(loss[:t]).all() and np.isfinite(result.metrics["train_acc"][:t]).all()
    if "val_loss" in result.metrics:  # evaluated on the parameters after each eval_every steps, up to t
        val_steps, val_loss = result.series("val_loss")
        assert np.array_equal(val_steps, np.arange(0, t + 1, cfg.eval_every)) and math.isfinite(val_loss[0])
    assert (run_dir(cfg, root) / "DONE").exists()
    assert json.loads((run_dir(cfg, root) / "DONE").read_text())["diverged_at"] == t
    forbid_computing(monkeypatch)
    cached = get(cfg, root)
    assert_same_numbers(result, cached)
    assert [(row["status"], row["steps_done"]) for row in list_runs(root)] == [("diverged", t)]


@pytest.mark.parametrize("mode", ["raise", "nan"])
@pytest.mark.parametrize("method", ["dense", "lowrank"])
def test_forced_eigensolver_failures_never_crash_a_run(root, monkeypatch, mode, method):
    """The chain of curvature.EIGENSOLVERS: with torch's solvers failing (raise, or NaN without raising, in both
    precisions) the run completes through scipy's LAPACK; with every solver failing it ends as diverged."""
    from chaosnb import curvature
    from tests.test_curvature import _failing

    cfg = RunConfig(model="cnn", optimizer="cgd", prune_set="neg", lr=0.03, steps=4, spectrum_method=method,
                    spectrum_every=1)
    normal = get(cfg, root / "normal")
    for name in ("torch.eigh", "torch.eigh[float64]"):
        monkeypatch.setitem(curvature.EIGENSOLVERS, name, _failing(mode))
    through_scipy = get(cfg, root / "scipy")
    assert through_scipy.status == "done" and through_scipy.steps_done == cfg.steps
    for key in ("train_loss", "n_pos", "n_neg", "eig_max"):
        assert np.allclose(through_scipy.metrics[key], normal.metrics[key], rtol=1e-4, atol=1e-6), key
    for name in list(curvature.EIGENSOLVERS):
        monkeypatch.setitem(curvature.EIGENSOLVERS, name, _failing(mode))
    failed = get(cfg, root / "none")  # must not raise
    assert failed.status == "diverged" and failed.diverged_at == 0 and failed.steps_done == 0
    assert "every eigensolver failed" in failed.meta["diverged_reason"]
    assert json.loads((run_dir(cfg, root / "none") / "DONE").read_text())["meta"]["diverged_reason"]


# ---------------------------------------------------------------------------------------------- sweeps
def test_parallel_sweep_matches_serial(tmp_path, monkeypatch):
    monkeypatch.setenv("CHAOSNB_PROGRESS", "0")
    configs = [dataclasses.replace(MLP, seed=1), dataclasses.replace(MLP, seed=2, momentum=0.9)]
    rows = sweep(configs, root=tmp_path / "parallel", jobs=2, progress=False)
    assert sorted(h for h, _, _ in rows) == sorted(c.run_hash() for c in configs)
    assert all(status == "done" for _, status, _ in rows)
    serial = [get(c, tmp_path / "serial") for c in configs]
    forbid_computing(monkeypatch)
    parallel = get_many(configs, tmp_path / "parallel", jobs=2)
    for a, b in zip(parallel, serial, strict=True):
        assert_same_numbers(a, b)


# ---------------------------------------------------------------------------------------------- perturbation
@pytest.fixture(scope="module")
def perturbation(tmp_path_factory, data_root, one_thread) -> dict:
    """A tiny CNN perturbation run (all five strategies), computed once into its own store."""
    root = tmp_path_factory.mktemp("perturbation")
    cfg = RunConfig(model="cnn", spectrum_method="dense", lr=0.05, steps=3, perturb_eps=0.1,
                    perturb_strategies=STRATEGIES, tangent_steps=(1, 3), snapshot_steps=(1,))
    assert not is_done(cfg.stage1(), root)
    result = get(cfg, root, progress=False)  # computes its stage-1 run first
    return {"config": cfg, "root": root, "result": result, "stage1": load_result(run_dir(cfg.stage1(), root))}


def test_perturbation_run(perturbation):
    cfg, root, result, stage1 = (perturbation[k] for k in ("config", "root", "result", "stage1"))
    assert result.status == "done"
    assert stage1 is not None and stage1.status == "done" and is_done(cfg.stage1(), root)
    n = stage1.arrays["final_theta"].shape[1]
    assert stage1.arrays["directions"].shape == (len(STRATEGIES), n)
    assert np.isfinite(stage1.arrays["directions"]).all()
    assert result.meta["models"] == ["unperturbed", *STRATEGIES]
    assert result.arrays["final_theta"].shape == (1 + len(STRATEGIES), n)
    assert "ftle_max" not in result.metrics  # the tangent map belongs to stage 1
    assert np.array_equal(stage1.series("ftle_max")[0], [1, 3])

    steps, dist = result.series("distance")
    assert np.array_equal(steps, np.arange(cfg.steps + 1)) and dist.shape == (cfg.steps + 1, len(STRATEGIES))
    np.testing.assert_allclose(dist[0], cfg.perturb_eps, rtol=0, atol=1e-6)

    # the unperturbed model is exactly the plain run (same config minus perturbation): same start, same batches
    plain = dataclasses.replace(cfg, perturb_eps=0.0, perturb_strategies=())
    assert plain == cfg.stage1()  # here the plain run is the stage-1 run
    _, loss = result.series("train_loss")
    assert loss.shape == (cfg.steps, 1 + len(STRATEGIES))
    assert np.array_equal(loss[:, 0], stage1.metrics["train_loss"])
    assert np.array_equal(result.arrays["final_theta"][0], stage1.arrays["final_theta"][0])
    # every perturbed model sees batch 0 of the same sampler: its loss is that of theta_0 + eps d on it
    flat, theta0 = make_flat_model(cfg.model, cfg.activation, cfg.seed, torch.float32)
    dataset = load_dataset(cfg.dataset)
    x, y = sampler_for(dataset, cfg.batch_size, cfg.seed).batch(dataset, 0)
    for i, strategy in enumerate(STRATEGIES):
        theta = theta0 + cfg.perturb_eps * torch.as_tensor(stage1.arrays["directions"][i], dtype=torch.float32)
        expected = float(torch.nn.functional.cross_entropy(flat.forward(theta, x), y))
        assert loss[0, 1 + i] == pytest.approx(expected, rel=1e-5), strategy
    assert len({float(v) for v in loss[0]}) > 1  # and the perturbations did change the models


# ---------------------------------------------------------------------------------------------- listing
def test_list_runs_and_cli(root, capsys):
    done = get(MLP, root)
    diverged_cfg = DIVERGING["mlp-absurd-lr"]
    diverged = get(diverged_cfg, root)
    partial_cfg = dataclasses.replace(MLP, seed=5)
    partial_dir = run_dir(partial_cfg, root)
    partial_dir.mkdir(parents=True)
    runs._compute(partial_cfg, partial_dir, root, checkpoint_every=5, progress=False, stop_after=12)
    corrupt_cfg = dataclasses.replace(MLP, seed=6)
    get(corrupt_cfg, root)
    _truncate(run_dir(corrupt_cfg, root) / "metrics.npz")

    rows = {row["hash"]: row for row in list_runs(root)}
    assert len(rows) == 4
    expect = {MLP.run_hash(): ("done", MLP.steps), diverged_cfg.run_hash(): ("diverged", diverged.steps_done),
              partial_cfg.run_hash(): ("partial", 10), corrupt_cfg.run_hash(): ("corrupt", 0)}
    for h, (status, steps_done) in expect.items():
        assert (rows[h]["status"], rows[h]["steps_done"]) == (status, steps_done), h
    assert rows[MLP.run_hash()]["label"] == MLP.label() and rows[MLP.run_hash()]["steps"] == MLP.steps
    assert rows[MLP.run_hash()]["wall_time"] == done.wall_time

    capsys.readouterr()
    assert cli.main(["runs"]) == 0
    out = capsys.readouterr().out
    assert str(root) in out and "4 runs" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line[:16] in expect}
    assert set(lines) == set(expect)
    for h, (status, steps_done) in expect.items():
        assert lines[h].split()[1] == status and f"{steps_done}/" in lines[h]
    assert cli.main(["runs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == list_runs(root)


def test_cli_run_computes_then_reads(root, capsys):
    args = ["run", "--quiet", "--steps", "5", "--lr", "0.05", "--seed", "3"]
    assert cli.main(args) == 0
    cfg = RunConfig(steps=5, lr=0.05, seed=3)
    out = capsys.readouterr().out
    assert cfg.run_hash() in out and "done" in out
    first = load_result(run_dir(cfg, root))
    assert first is not None
    assert cli.main(args) == 0  # second time: read from the store
    assert_same_numbers(first, load_result(run_dir(cfg, root)))


def test_cli_sweep(root, tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text("defaults: {steps: 5, lr: 0.05}\nruns:\n  - {seed: 1}\n  - {seed: 2, momentum: 0.5}\n")
    configs = [RunConfig(steps=5, lr=0.05, seed=1), RunConfig(steps=5, lr=0.05, seed=2, momentum=0.5)]
    torch.set_num_threads(2)
    try:
        assert cli.main(["sweep", str(path), "--jobs", "1", "--quiet"]) == 0
        assert torch.get_num_threads() == 2  # a serial sweep leaves the caller's torch threads alone
    finally:
        torch.set_num_threads(1)
    out = capsys.readouterr().out
    for cfg in configs:
        assert f"{cfg.run_hash()}  done" in out
        assert is_done(cfg, root)


def test_perturbation_with_diverged_stage1(root):
    """No directions without a stage-1 run: a clear error; the stage-2 run is listed as partial, not corrupt."""
    cfg = RunConfig(model="cnn", spectrum_method="dense", lr=1e4, steps=5, perturb_eps=0.1,
                    perturb_strategies=("random",))
    with pytest.raises(RuntimeError, match="diverged"):
        get(cfg, root)
    assert load_result(run_dir(cfg.stage1(), root)).status == "diverged"
    rows = {row["hash"]: row for row in list_runs(root)}
    assert rows[cfg.stage1().run_hash()]["status"] == "diverged"
    assert (rows[cfg.run_hash()]["status"], rows[cfg.run_hash()]["label"]) == ("partial", cfg.label())


def test_book_driver_makes_relative_roots_absolute(monkeypatch, tmp_path):
    """`CHAOSNB_DATA=../shared/data chaosnb book` must still find the data from the notebooks' build tree."""
    from chaosnb.book import absolute_path_variables

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHAOSNB_DATA", "../data")
    monkeypatch.setenv("CHAOSNB_RESULTS", "results")
    monkeypatch.delenv("CHAOSNB_VERDICTS", raising=False)
    absolute_path_variables()
    assert os.environ["CHAOSNB_DATA"] == str((tmp_path / "../data").resolve())
    assert os.environ["CHAOSNB_RESULTS"] == str(tmp_path / "results")
