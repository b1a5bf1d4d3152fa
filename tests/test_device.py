"""The run's device (``RunConfig.device``, ``--device``, ``$CHAOSNB_DEVICE``): CPU bytes and hashes unchanged, the
device recorded, a one-line error without CUDA, and no tensor of a run created on torch's default device."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch

from chaosnb import cli, runs
from chaosnb.config import DEVICE_ENV, ConfigError, RunConfig, check_device_available
from chaosnb.data import load_dataset
from chaosnb.models import build_model, num_parameters
from chaosnb.perturb import STRATEGIES
from chaosnb.train import Training

from .test_config import DEFAULT_HASH, PINNED, PINNED_HASH

SGD = RunConfig(steps=4, spectrum_every=1, tangent_steps=(2, 4), snapshot_steps=(2,), eval_every=2)
CGD_NOISY = RunConfig(optimizer="cgd", prune_set="neg", prune_k=20, prune_select="rand", prune_noise_std=0.01,
                      lr=0.05, momentum=0.5, steps=3, tangent_steps=(3,))
PERTURBED = RunConfig(steps=3, lr=0.05, perturb_eps=1e-3, perturb_strategies=("chaotic", "random"), eval_every=3)
CNN_DENSE = RunConfig(model="cnn", spectrum_method="dense", optimizer="cgd", lr=0.03, steps=2, tangent_steps=(2,))


def _run(config: RunConfig, directions=None, default_device: str | None = None):
    """A Training run to its end (with torch's default device set to ``default_device`` for the steps)."""
    training = Training(config, directions)
    if default_device is not None:
        torch.set_default_device(default_device)
    try:
        while not training.finished:
            training.advance()
    finally:
        if default_device is not None:
            torch.set_default_device(None)
    return training.result()


def _directions(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for name in STRATEGIES:
        d = rng.standard_normal(n)
        out[name] = d / np.linalg.norm(d)
    return out


def _assert_same_bytes(a, b) -> None:
    assert a.status == b.status and a.steps_done == b.steps_done
    for got, want in ((a.metrics, b.metrics), (a.arrays, b.arrays)):
        assert sorted(got) == sorted(want)
        for key in want:
            assert got[key].dtype == want[key].dtype and got[key].tobytes() == want[key].tobytes(), key


def test_cpu_device_keeps_hashes_and_is_the_default(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert RunConfig(device="cpu").run_hash() == RunConfig().run_hash() == DEFAULT_HASH
    assert RunConfig(**PINNED, device="CPU").run_hash() == PINNED_HASH
    assert RunConfig().device == "cpu" and RunConfig().to_dict()["device"] == "cpu"
    gpu = RunConfig(device="cuda")
    assert gpu.run_hash() != DEFAULT_HASH and gpu.label().endswith("cuda") and gpu.stage1().device == "cuda"
    assert RunConfig.from_dict(gpu.to_dict()) == gpu
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    assert RunConfig() == gpu and RunConfig(device="cpu").run_hash() == DEFAULT_HASH
    monkeypatch.setenv(DEVICE_ENV, "tpu")
    with pytest.raises(ConfigError, match=r"device: unknown value 'tpu' \(from \$CHAOSNB_DEVICE\)"):
        RunConfig()
    with pytest.raises(ConfigError, match="device: unknown value 'cuda:1'"):
        RunConfig(device="cuda:1")


@pytest.mark.parametrize("config", [SGD, CGD_NOISY, PERTURBED, CNN_DENSE],
                         ids=["sgd-tangent", "cgd-noise-momentum", "perturb", "cnn-dense-piecewise-linear"])
def test_every_tensor_of_a_run_follows_its_device(config, data_root):
    """With torch's default device set to "meta" during the steps, any tensor made without the run's device (or a
    CPU generator's) would be a meta tensor and the run would fail or change; it gives the same bytes as usual."""
    load_dataset(config.dataset)
    directions = _directions(num_parameters(build_model(config.model))) if config.is_perturbation else None
    plain = _run(config, directions)
    explicit = _run(dataclasses.replace(config, device="cpu"), directions, default_device="meta")
    _assert_same_bytes(explicit, plain)
    assert plain.status == "done" and plain.steps_done == config.steps


def test_results_record_the_device(tmp_path, data_root, monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    config = RunConfig(steps=2)
    result = runs.get(config, tmp_path, progress=False)
    recorded = json.loads((runs.run_dir(config, tmp_path) / "config.json").read_text())
    info = recorded["device"]
    assert info["type"] == "cpu" and info["torch_version"] == torch.__version__ and info["name"]
    assert info["cuda_version"] == torch.version.cuda and "device" not in result.meta  # meta: unchanged keys
    assert recorded["config"]["device"] == "cpu"
    # a CPU result stays readable as such when $CHAOSNB_DEVICE asks for the GPU (the hash names the device)
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    assert runs.load_result(runs.run_dir(config, tmp_path)) is not None
    assert runs.run_dir(RunConfig(steps=2), tmp_path) != runs.run_dir(config, tmp_path)


@pytest.mark.parametrize("argv", [["run", "--steps", "1", "--device", "cuda"], ["book", "--device", "cuda"],
                                  ["run", "--steps", "1"]], ids=["run", "book", "env"])
def test_cuda_without_a_gpu_is_one_line_and_exit_2(argv, tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CHAOSNB_RESULTS", str(tmp_path / "store"))
    monkeypatch.setenv(DEVICE_ENV, "cuda" if argv[-1] == "1" else "cpu")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device" in err and "CHAOSNB_DEVICE" in err and "no CUDA" in err
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


def test_sweep_with_cuda_without_a_gpu_fails_before_any_run(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CHAOSNB_RESULTS", str(tmp_path / "store"))
    spec = tmp_path / "runs.json"
    spec.write_text(json.dumps([RunConfig(steps=1).to_dict(), RunConfig(steps=1, device="cuda").to_dict()]))
    assert cli.main(["sweep", str(spec), "--jobs", "1", "--quiet"]) == 2
    assert "device: 'cuda'" in capsys.readouterr().err
    assert not any(p.is_dir() for p in (tmp_path / "store").glob("*"))
    check_device_available("cpu")  # never raises
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    check_device_available("cuda")  # a GPU present: accepted


def test_sweep_payload_carries_the_device(monkeypatch):
    """Workers may have another $CHAOSNB_DEVICE: the configuration they rebuild names its device explicitly."""
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    gpu = RunConfig(steps=1)
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    rebuilt = RunConfig.from_dict(json.loads(json.dumps(gpu.to_dict())))
    assert rebuilt.device == "cuda" and rebuilt.run_hash() == gpu.run_hash()
    assert hashlib.sha256(json.dumps(gpu.to_dict()).encode()).hexdigest() != hashlib.sha256(
        json.dumps(RunConfig(steps=1).to_dict()).encode()).hexdigest()


def test_records_from_before_the_device_option_read_as_cpu_runs(tmp_path, data_root, monkeypatch):
    """A config.json written before ``device`` existed (no such key) is a CPU run, even under $CHAOSNB_DEVICE=cuda."""
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    config = RunConfig(steps=2)
    runs.get(config, tmp_path, progress=False)
    directory = runs.run_dir(config, tmp_path)
    recorded = json.loads((directory / "config.json").read_text())
    del recorded["config"]["device"], recorded["device"]
    runs.atomic_write_json(directory / "config.json", recorded)
    done = json.loads((directory / "DONE").read_text())
    done["sha256"]["config.json"] = hashlib.sha256((directory / "config.json").read_bytes()).hexdigest()
    done["done_sha256"] = runs._fields_sha256(done)
    runs.atomic_write_json(directory / "DONE", done)
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    result = runs.load_result(directory)
    assert result is not None and result.config.device == "cpu" and result.config.run_hash() == directory.name
