"""Bad input answered in one line, results tied to their data and bytes (issue 9, sections 2-5).

Table-driven: every case runs the real ``chaosnb`` command line in-process, and asserts the exit code, that the
message names the field, entry or file, that no traceback is printed, and that nothing in the results store
changed. The cases that need more than one command (stale data, one set of bytes per configuration, exit codes of
failing sweeps) follow the table.
"""

from __future__ import annotations

import bz2
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from chaosnb import book, cli, experiments, runs
from chaosnb.config import RunConfig
from chaosnb.data import SPLIT_FILES
from chaosnb.runs import get, list_runs, load_result, run_dir
from tests.test_runs import assert_same_numbers

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("data_root")
CHEAP = ["--steps", "2", "--quiet"]


# ---------------------------------------------------------------------------------------------- helpers
def tree_state(path: Path) -> dict:
    """Every file below ``path`` (or ``path`` itself) with the sha256 of its bytes; {} when it does not exist."""
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(path.rglob("*"))}


def data_copy(tmp_path: Path, data_root: Path, damage: dict[str, bytes] | None = None) -> Path:
    """A data root of symbolic links to the real files, with the files named in ``damage`` replaced by bytes."""
    root = tmp_path / "data"
    for rel in [f for splits in SPLIT_FILES.values() for files in splits.values() for f in files]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if damage and rel in damage:
            (root / rel).write_bytes(damage[rel])
        else:
            (root / rel).symlink_to(data_root / rel)
    return root


def usps_rows(data_root: Path, rows: int) -> bytes:
    """A well-formed usps.bz2 holding only the first ``rows`` samples (the truncated file of the issue)."""
    lines = bz2.decompress((data_root / "usps.bz2").read_bytes()).splitlines(keepends=True)
    return bz2.compress(b"".join(lines[:rows]))


def usps_relabelled(data_root: Path) -> bytes:
    """A full-size usps.bz2 whose first label differs: other data of the right shape."""
    lines = bz2.decompress((data_root / "usps.bz2").read_bytes()).splitlines(keepends=True)
    label, rest = lines[0].split(b" ", 1)
    lines[0] = (b"1" if label != b"1" else b"2") + b" " + rest
    return bz2.compress(b"".join(lines))


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------------------------------------- the table
# name -> (setup(tmp_path, data_root) -> (argv, env overrides), expected exit code, strings the message must name)
def _args(*argv):
    return lambda tmp, data: (list(argv), {})


def _config_file(text: str, *extra):
    return lambda tmp, data: (["run", "--config", write(tmp, "runs.yaml", text), *extra], {})


def _sweep_file(text: str, *extra):
    return lambda tmp, data: (["sweep", write(tmp, "runs.yaml", text), "--quiet", *extra], {})


def _data(damage=None, missing: bool = False, empty: bool = False):
    def setup(tmp: Path, data: Path):
        if missing:
            root = tmp / "no-such-data"
        elif empty:
            root = tmp / "empty-data"
            root.mkdir()
        else:
            root = data_copy(tmp, data, {rel: make(data) for rel, make in (damage or {}).items()})
        return ["run", "--seed", "5", *CHEAP], {"CHAOSNB_DATA": str(root)}  # not the cached run

    return setup


def _store(kind: str):
    def setup(tmp: Path, data: Path):
        if kind == "file":
            path = tmp / "store-file"
            path.write_text("not a folder")
        elif kind == "under-file":
            (tmp / "a-file").write_text("x")
            path = tmp / "a-file" / "store"
        else:  # a read-only file system: sysfs refuses new folders, even to root
            path = Path("/sys/chaosnb-results-test")
        return ["run", *CHEAP], {"CHAOSNB_RESULTS": str(path)}

    return setup


FMNIST_LABELS = "FashionMNIST/raw/train-labels-idx1-ubyte"
CASES = {
    # section 5: flags
    "prune-k-not-an-int": (_args("run", "--prune-k", "abc", *CHEAP), 2, ["prune_k", "abc"]),
    "tangent-steps-not-numbers": (_args("run", "--tangent-steps", "a,b", *CHEAP), 2, ["tangent_steps", "'a'"]),
    "tangent-steps-fractional": (_args("run", "--tangent-steps", "1,2.7", *CHEAP), 2, ["tangent_steps", "2.7"]),
    "lr-inf": (_args("run", "--lr", "inf", *CHEAP), 2, ["lr", "finite"]),
    "spectrum-rtol-nan": (_args("run", "--spectrum-rtol", "nan", *CHEAP), 2, ["spectrum_rtol", "finite"]),
    "spectrum-rtol-inf": (_args("run", "--spectrum-rtol", "inf", *CHEAP), 2, ["spectrum_rtol", "finite"]),
    "noise-nan": (_args("run", "--optimizer", "cgd", "--prune-noise-std", "nan", *CHEAP), 2,
                  ["prune_noise_std", "finite"]),
    "noise-inf": (_args("run", "--optimizer", "cgd", "--prune-noise-std", "inf", *CHEAP), 2,
                  ["prune_noise_std", "finite"]),
    "perturb-eps-nan": (_args("run", "--perturb-eps", "nan", "--perturb-strategies", "random", *CHEAP), 2,
                        ["perturb_eps", "finite"]),
    "batch-larger-than-train-set": (_args("run", "--batch-size", "8000", *CHEAP), 2,
                                    ["batch_size", "8000", "7291"]),
    "sweep-jobs-0": (_sweep_file("- {steps: 2}\n", "--jobs", "0"), 2, ["--jobs", "0"]),
    "sweep-jobs-negative": (_sweep_file("- {steps: 2}\n", "--jobs", "-3"), 2, ["--jobs", "-3"]),
    # section 5: configuration files
    "config-missing": (lambda tmp, data: (["run", "--config", str(tmp / "nope.yaml")], {}), 2, ["nope.yaml",
                                                                                               "not found"]),
    "config-malformed-yaml": (_config_file("steps: [1, 2\nlr: 0.1\n"), 2, ["runs.yaml", "not valid YAML",
                                                                         "line"]),
    "config-list-of-ints": (_config_file("[1, 2, 3]\n"), 2, ["entry 0", "entry 1", "entry 2", "int"]),
    "config-every-bad-entry": (_sweep_file("- {steps: 2}\n- {lr: -1}\n- {steps: 2}\n- {dataset: cifar}\n"
                                           "- {steps: 2.5}\n"), 2,
                               ["runs.yaml", "3 of 5", "entry 1: lr", "entry 3: dataset", "entry 4: steps"]),
    "config-runs-not-a-list": (_config_file("runs: {steps: 2}\n"), 2, ["runs.yaml", "'runs'"]),
    # section 5: the results store
    "store-is-a-file": (_store("file"), 1, ["store-file", "not writable", "CHAOSNB_RESULTS"]),
    "store-under-a-file": (_store("under-file"), 1, ["a-file", "not writable", "CHAOSNB_RESULTS"]),
    "store-read-only-fs": (_store("sysfs"), 1, ["/sys/chaosnb-results-test", "not writable", "CHAOSNB_RESULTS"]),
    # sections 2 and 5: data
    "data-root-missing": (_data(missing=True), 1, ["'usps'", "no-such-data", "CHAOSNB_DATA"]),
    "data-root-empty": (_data(empty=True), 1, ["'usps'", "empty-data", "usps.bz2", "CHAOSNB_DATA"]),
    "usps-truncated-bytes": (_data({"usps.bz2": lambda d: (d / "usps.bz2").read_bytes()[:100_000]}), 1,
                             ["'usps'", "usps.bz2", "damaged or truncated", "EOFError"]),
    "usps-1000-rows": (_data({"usps.bz2": lambda d: usps_rows(d, 1000)}), 1,
                       ["'usps'", "usps.bz2", "1,000", "7,291"]),
    "fmnist-damaged": (lambda tmp, data: (["run", "--dataset", "fashion_mnist", *CHEAP],
                                          {"CHAOSNB_DATA": str(data_copy(tmp, data, {
                                              FMNIST_LABELS: (data / FMNIST_LABELS).read_bytes()[:30_000]}))}),
                       1, ["'fashion_mnist'", "train-labels-idx1-ubyte", "30,000 bytes", "damaged"]),
}


@pytest.fixture(scope="module")
def populated_store(tmp_path_factory, data_root) -> Path:
    """A results store holding one finished run, so that "nothing changed" is a real check."""
    store = tmp_path_factory.mktemp("store") / "results"
    get(RunConfig(steps=2), store, progress=False)
    return store


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gets_one_clear_line(name, tmp_path, data_root, populated_store, monkeypatch, capsys):
    setup, code, names = CASES[name]
    argv, env = setup(tmp_path, data_root)
    monkeypatch.setenv("CHAOSNB_RESULTS", str(populated_store))
    monkeypatch.setenv("CHAOSNB_PROGRESS", "0")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    watched = [populated_store, Path(env.get("CHAOSNB_RESULTS", populated_store))]
    data_dir = Path(env["CHAOSNB_DATA"]) if "CHAOSNB_DATA" in env else None
    before = [tree_state(p) for p in watched]
    data_before = tree_state(data_dir) if data_dir else None
    try:
        exit_code = cli.main(argv)
    except SystemExit as err:  # argparse's own usage errors
        exit_code = err.code
    out, err = capsys.readouterr()
    assert exit_code == code, (out, err)
    assert "Traceback" not in out + err
    for expected in names:
        assert expected in err, f"{expected!r} not named in: {err}"
    assert [tree_state(p) for p in watched] == before  # nothing in the store changed
    if data_dir is not None:
        assert tree_state(data_dir) == data_before  # no data root created (or touched) as a side effect
    if name == "data-root-missing":
        assert not data_dir.exists()


def test_table_covers_every_refused_value():
    """The issue's list of values that must be refused, each with a row in the table above."""
    required = {"prune-k-not-an-int", "tangent-steps-not-numbers", "tangent-steps-fractional", "lr-inf",
                "spectrum-rtol-nan", "spectrum-rtol-inf", "noise-nan", "noise-inf", "perturb-eps-nan",
                "batch-larger-than-train-set", "sweep-jobs-0", "sweep-jobs-negative", "config-missing",
                "config-malformed-yaml", "config-list-of-ints", "config-every-bad-entry", "store-is-a-file",
                "store-read-only-fs", "data-root-missing", "data-root-empty", "usps-truncated-bytes",
                "usps-1000-rows", "fmnist-damaged"}
    assert required <= set(CASES)


# ---------------------------------------------------------------------------------------------- section 2
def test_result_of_other_data_is_never_reused(tmp_path, data_root, monkeypatch):
    """A run computed from other (full-size, relabelled) USPS data is cached; once the real data is back, the
    cached result is stale: it is computed again (with a warning), and the real data's numbers replace it."""
    monkeypatch.setenv("CHAOSNB_PROGRESS", "0")
    store = tmp_path / "results"
    other = data_copy(tmp_path, data_root, {"usps.bz2": usps_relabelled(data_root)})
    cfg = RunConfig(steps=3, batch_size=7291, lr=0.1)  # the whole training set: the changed label matters
    monkeypatch.setenv("CHAOSNB_DATA", str(other))
    on_other = get(cfg, store)
    assert load_result(run_dir(cfg, store)) is not None
    monkeypatch.setenv("CHAOSNB_DATA", str(data_root))
    assert load_result(run_dir(cfg, store)) is None
    assert [row["status"] for row in list_runs(store)] == ["stale-data"]
    with pytest.warns(RuntimeWarning, match="other data"):
        on_real = get(cfg, store)
    assert on_real.meta["data_fingerprint"] != on_other.meta["data_fingerprint"]
    assert not np.array_equal(on_real.arrays["final_theta"], on_other.arrays["final_theta"])
    assert_same_numbers(on_real, get(cfg, tmp_path / "fresh"))


# ---------------------------------------------------------------------------------------------- section 3
BYTES_CONFIG = RunConfig(optimizer="cgd", prune_set="chaotic", lr=0.05, steps=6, spectrum_every=1, eval_every=3)


def _bytes_of(directory: Path) -> dict[str, str]:
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest()
            for name in ("metrics.npz", "arrays.npz")}


def test_one_configuration_one_set_of_bytes_whichever_command(tmp_path, data_root, monkeypatch):
    """The same configuration through ``chaosnb run`` (a process with torch's default 2+ threads), ``chaosnb sweep``
    (worker processes) and the book driver's precompute stores byte-identical metrics and arrays, and records one
    torch thread."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(CHAOSNB_PROGRESS="0", CHAOSNB_DATA=str(data_root))
    spec = tmp_path / "one.yaml"
    spec.write_text(json.dumps([BYTES_CONFIG.to_dict(), dataclasses.replace(BYTES_CONFIG, seed=7).to_dict()]))
    stores = {name: tmp_path / name for name in ("run", "sweep", "book")}
    cmd = [sys.executable, "-m", "chaosnb.cli"]
    subprocess.run([*cmd, "run", "--config", str(spec), "--quiet"], cwd=REPO, check=True, timeout=600,
                   env={**env, "CHAOSNB_RESULTS": str(stores["run"]), "OMP_NUM_THREADS": "2"})
    subprocess.run([*cmd, "sweep", str(spec), "--jobs", "2", "--quiet"], cwd=REPO, check=True, timeout=600,
                   env={**env, "CHAOSNB_RESULTS": str(stores["sweep"])})
    monkeypatch.setenv("CHAOSNB_RESULTS", str(stores["book"]))
    monkeypatch.setenv("CHAOSNB_PROGRESS", "0")
    monkeypatch.setattr(experiments, "all_configs", lambda profile: [BYTES_CONFIG])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        book.precompute("smoke", None, jobs=1)
    finally:
        torch.set_num_threads(threads)
    digests = {name: _bytes_of(run_dir(BYTES_CONFIG, store)) for name, store in stores.items()}
    assert digests["run"] == digests["sweep"] == digests["book"]
    for store in stores.values():
        recorded = json.loads((run_dir(BYTES_CONFIG, store) / "config.json").read_text())
        assert recorded["torch_threads"] == runs.RUN_THREADS == 1


# ---------------------------------------------------------------------------------------------- section 5
def test_failing_sweep_exits_non_zero_with_a_table_of_failures(tmp_path, monkeypatch, capsys):
    """One run of the sweep fails (its stage-1 run diverges, so it has no directions): the other finishes, the exit
    code is 1, and the failed run is listed with its hash and message."""
    monkeypatch.setenv("CHAOSNB_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("CHAOSNB_PROGRESS", "0")
    bad = RunConfig(model="cnn", spectrum_method="dense", lr=1e4, steps=3, perturb_eps=0.1,
                    perturb_strategies=("random",))
    good = RunConfig(steps=3)
    spec = write(tmp_path, "mixed.yaml", json.dumps([good.to_dict(), bad.to_dict()]))
    assert cli.main(["sweep", spec, "--jobs", "1", "--quiet"]) == 1
    out, err = capsys.readouterr()
    assert "1 of 3 run(s) failed" in err and bad.run_hash() in err and "diverged" in err
    assert good.run_hash() not in err and load_result(run_dir(good, tmp_path / "results")) is not None


def test_runs_listing_labels_name_the_seed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CHAOSNB_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("CHAOSNB_PROGRESS", "0")
    for seed in (1, 2):
        get(RunConfig(steps=2, seed=seed))
    assert cli.main(["runs"]) == 0
    out = capsys.readouterr().out
    assert "seed=1" in out and "seed=2" in out


@pytest.mark.parametrize("set_variable", [True, False])
def test_info_says_where_the_store_comes_from(tmp_path, monkeypatch, capsys, set_variable):
    if set_variable:
        monkeypatch.setenv("CHAOSNB_RESULTS", str(tmp_path / "results"))
    else:
        monkeypatch.delenv("CHAOSNB_RESULTS", raising=False)
    assert cli.main(["info"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("results store"))
    assert ("from $CHAOSNB_RESULTS" in line) == set_variable
    assert ("the default" in line) == (not set_variable)


def test_data_copy_helper_is_faithful(tmp_path, data_root):
    """The symlinked copy used above is the real data (same fingerprint) unless a file is replaced."""
    from chaosnb.data import dataset_fingerprint

    assert dataset_fingerprint("usps", data_copy(tmp_path / "a", data_root)) == dataset_fingerprint("usps",
                                                                                                     data_root)
    changed = data_copy(tmp_path / "b", data_root, {"usps.bz2": usps_relabelled(data_root)})
    assert dataset_fingerprint("usps", changed) != dataset_fingerprint("usps", data_root)
    shutil.rmtree(tmp_path / "b")


def test_yaml_scientific_notation_is_a_number(tmp_path):
    """``lr: 1e-3`` (no dot) is a float, as YAML 1.2 and every user expect, not the string PyYAML 1.1 makes of it."""
    from chaosnb.cli_runs import load_config_file

    entries = load_config_file(write(tmp_path, "sci.yaml", "lr: 1e-3\nspectrum_rtol: 1E-05\nsteps: 10\n"))
    assert RunConfig.from_dict(entries[0]) == RunConfig(lr=1e-3, spectrum_rtol=1e-5, steps=10)
