"""The results store: runs are computed once, written atomically, resumed after interruption, read back.

Layout of one run, named by the configuration's hash::

    $CHAOSNB_RESULTS/<hash>/config.json     canonical config + package version + seed (written first)
                           /checkpoint.pt   latest resumable state (while running; removed when done)
                           /metrics.npz     one array per metric, with its step index (<name>__step)
                           /arrays.npz      final parameters, stage-1 perturbation directions, ...
                           /DONE            written last: status, steps, wall time, sha256 of the two .npz

A directory without a valid DONE (missing, unreadable, or checksums that do not match) is never read as a
result: it is resumed from its checkpoint when that loads, else recomputed. Concurrent requests for the
same run (parallel notebooks or sweep workers) wait on a file lock instead of computing it twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from chaosnb import __version__
from chaosnb.config import RunConfig
from chaosnb.perturb import STRATEGIES
from chaosnb.train import RunResult, Training

RESULTS_ENV = "CHAOSNB_RESULTS"
PROGRESS_ENV = "CHAOSNB_PROGRESS"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT_EVERY = 200


def results_root() -> Path:
    """``$CHAOSNB_RESULTS``, else ``_build/results`` in the project (or ~/.cache/chaosnb/results)."""
    env = os.environ.get(RESULTS_ENV)
    if env:
        return Path(env).expanduser().resolve()
    if (PROJECT_ROOT / "pyproject.toml").exists():
        return PROJECT_ROOT / "_build" / "results"
    return Path.home() / ".cache" / "chaosnb" / "results"


def run_dir(config: RunConfig, root: Path | None = None) -> Path:
    return (root or results_root()) / config.run_hash()


# ---------------------------------------------------------------------------------------------- atomic I/O
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------- reading
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_result(directory: Path) -> RunResult | None:
    """The finished run in ``directory``, or None when it is missing, partial or corrupted."""
    try:
        done = json.loads((directory / "DONE").read_text())
        for name in ("metrics.npz", "arrays.npz"):
            if _sha256(directory / name) != done["sha256"][name]:
                return None
        config = RunConfig.from_dict(json.loads((directory / "config.json").read_text())["config"])
        if config.run_hash() != directory.name:  # config.json altered: the numbers are not this config's
            return None
        with np.load(directory / "metrics.npz") as data:
            metrics = {k: data[k] for k in data.files}
        with np.load(directory / "arrays.npz") as data:
            arrays = {k: data[k] for k in data.files}
        return RunResult(config, metrics, arrays, done["status"], done["steps_done"], done.get("diverged_at"),
                         done.get("wall_time", 0.0), done.get("meta", {}))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, json.JSONDecodeError):
        return None


def is_done(config: RunConfig, root: Path | None = None) -> bool:
    return load_result(run_dir(config, root)) is not None


# ---------------------------------------------------------------------------------------------- computing
def _progress_enabled(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    return os.environ.get(PROGRESS_ENV, "1") != "0"


def _stage1_directions(config: RunConfig, root: Path | None, progress: bool | None) -> dict[str, np.ndarray]:
    stage1 = get(config.stage1(), root=root, progress=progress)
    if stage1.diverged or "directions" not in stage1.arrays:
        raise RuntimeError(f"stage-1 run {stage1.config.run_hash()} diverged or has no directions")
    return {name: stage1.arrays["directions"][i] for i, name in enumerate(STRATEGIES)}


def _compute(config: RunConfig, directory: Path, root: Path | None, checkpoint_every: int,
             progress: bool | None, stop_after: int | None = None) -> RunResult | None:
    atomic_write_json(directory / "config.json", {"config": config.to_dict(), "hash": config.run_hash(),
                                                  "seed": config.seed, "chaosnb_version": __version__,
                                                  "torch_version": torch.__version__, "label": config.label()})
    directions = _stage1_directions(config, root, progress) if config.is_perturbation else None
    training = Training(config, directions)
    checkpoint = directory / "checkpoint.pt"
    if checkpoint.exists():
        try:
            state = torch.load(checkpoint, weights_only=False)
            if state.get("hash") == config.run_hash():
                training.load_state_dict(state["training"])
        except Exception:  # noqa: BLE001 - an unreadable checkpoint means: start again
            training = Training(config, directions)
    bar = None
    if _progress_enabled(progress):
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=training.step, desc=config.label(), unit="step",
                   dynamic_ncols=True, file=sys.stderr, leave=False)
    steps_this_call = 0
    while not training.finished:
        training.advance()
        steps_this_call += 1
        if bar is not None:
            bar.update(1)
        if training.finished:
            break
        if training.step % checkpoint_every == 0:
            atomic_write_bytes(checkpoint, _torch_bytes({"hash": config.run_hash(),
                                                         "training": training.state_dict()}))
        if stop_after is not None and steps_this_call >= stop_after:
            if bar is not None:
                bar.close()
            return None
    if bar is not None:
        bar.close()
    result = training.result()
    _write_result(directory, result)
    with contextlib.suppress(FileNotFoundError):
        checkpoint.unlink()
    return result


def _write_result(directory: Path, result: RunResult) -> None:
    (directory / "DONE").unlink(missing_ok=True)
    metrics, arrays = _npz_bytes(result.metrics), _npz_bytes(result.arrays)
    atomic_write_bytes(directory / "metrics.npz", metrics)
    atomic_write_bytes(directory / "arrays.npz", arrays)
    atomic_write_json(directory / "DONE", {
        "status": result.status, "steps_done": result.steps_done, "diverged_at": result.diverged_at,
        "wall_time": result.wall_time, "meta": result.meta, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "sha256": {"metrics.npz": hashlib.sha256(metrics).hexdigest(),
                   "arrays.npz": hashlib.sha256(arrays).hexdigest()}})


def get(config: RunConfig, root: Path | None = None, *, checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
        progress: bool | None = None, recompute: bool = False) -> RunResult:
    """The result of ``config``: read from the store when finished, else computed (resuming if possible)."""
    directory = run_dir(config, root)
    if not recompute:
        cached = load_result(directory)
        if cached is not None:
            return cached
    with _locked(directory.parent / f".{directory.name}.lock"):
        if not recompute:
            cached = load_result(directory)  # another process may have finished it while we waited
            if cached is not None:
                return cached
        elif directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True, exist_ok=True)
        result = _compute(config, directory, root, checkpoint_every, progress)
    assert result is not None
    return result


def get_many(configs: Sequence[RunConfig], root: Path | None = None, *, jobs: int = 1,
             progress: bool | None = None, scheduler: str | None = None) -> list[RunResult]:
    """Results of several configurations; missing ones are computed by :func:`sweep` (on a local Dask cluster
    of up to ``jobs`` processes, or on ``scheduler``) when ``jobs`` > 1 or a scheduler is given."""
    from chaosnb.cluster import scheduler_address

    todo = [c for c in dict.fromkeys(configs) if not is_done(c, root)]
    address = scheduler_address(scheduler)
    if todo and (address or (jobs > 1 and len(todo) > 1)):
        sweep(todo, root=root, jobs=jobs, progress=progress, scheduler=address)
    return [get(c, root, progress=progress) for c in configs]


def _sweep_worker(payload: tuple[dict, str | None, bool | None, int]) -> tuple[str, str, float]:
    """One run of a sweep, in a worker: (hash, status, wall time), status ``"error: ..."`` if it raised."""
    data, root, progress, checkpoint_every = payload
    torch.set_num_threads(1)
    config = RunConfig.from_dict(data)
    try:
        result = get(config, Path(root) if root else None, progress=progress, checkpoint_every=checkpoint_every)
    except Exception as err:  # noqa: BLE001 - one failing run must not stop the others; reported to the caller
        return config.run_hash(), f"error: {type(err).__name__}: {err}", 0.0
    return config.run_hash(), result.status, result.wall_time


def sweep(configs: Iterable[RunConfig], root: Path | None = None, *, jobs: int | None = None,
          progress: bool | None = None, runs_bar: bool | None = None, scheduler: str | None = None,
          checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY) -> list[tuple[str, str, float]]:
    """Run independent configurations on a Dask cluster; returns (hash, status, wall time) per run, stage-1
    runs of perturbation runs that were not asked for first, then ``configs`` in order; status
    ``"error: ..."`` for a run that raised or whose worker kept dying (the others go on).

    ``scheduler`` (default ``$CHAOSNB_SCHEDULER``) is the address of a running Dask scheduler; without one
    the runs go to a local cluster of ``jobs`` single-threaded processes (default: the number of cores), or,
    for ``jobs=1``, run here one after the other (leaving this process's torch threads as they were). A
    perturbation run starts only once its stage-1 run is finished (:mod:`chaosnb.cluster`). ``progress``
    switches the per-step bars of the runs, ``runs_bar`` one bar over the finished runs (default: like
    ``progress``); ``checkpoint_every`` is the runs' checkpoint cadence in steps."""
    from tqdm.auto import tqdm

    from chaosnb import cluster

    configs = list(dict.fromkeys(configs))
    stage1 = [c for c in dict.fromkeys(c.stage1() for c in configs if c.is_perturbation) if c not in configs]
    ordered = stage1 + configs
    if not ordered:
        return []
    address = cluster.scheduler_address(scheduler)
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(ordered)))
    store = cluster.store_path(root or results_root())
    bar = tqdm(total=len(ordered), desc="runs", unit="run", file=sys.stdout,
               disable=not _progress_enabled(progress if runs_bar is None else runs_bar))

    def finished(config: RunConfig, row: tuple[str, str, float]) -> None:
        bar.set_postfix_str(f"{config.label()} ({row[1]}, {row[2]:.0f} s)", refresh=False)
        bar.update()

    def payload(config: RunConfig) -> tuple[dict, str, bool | None, int]:
        return config.to_dict(), store, progress, checkpoint_every

    try:
        if address is None and jobs == 1:  # in this process: leave its torch thread count as it was
            threads = torch.get_num_threads()
            try:
                rows = {}
                for config in ordered:
                    rows[config] = _sweep_worker(payload(config))
                    finished(config, rows[config])
            finally:
                torch.set_num_threads(threads)
        else:
            if address is None:  # forked local workers start with the datasets loaded here (USPS: 5-15 s each)
                cluster.preload_datasets({c.dataset for c in ordered})
            with cluster.connect(address, jobs) as client:
                rows = cluster.submit_runs(client, ordered, payload, store, finished)
    finally:
        bar.close()
    return [rows[c] for c in ordered]


def list_runs(root: Path | None = None) -> list[dict]:
    """One row per run directory: hash, label, status (done/diverged/partial/corrupt), steps, wall time."""
    root = root or results_root()
    rows = []
    for directory in sorted(p for p in root.glob("*") if p.is_dir()):
        row = {"hash": directory.name, "label": "?", "status": "partial", "steps_done": 0, "steps": None,
               "wall_time": None}
        try:
            cfg = json.loads((directory / "config.json").read_text())
            row["label"], row["steps"] = cfg["label"], cfg["config"]["steps"]
        except (OSError, KeyError, TypeError, json.JSONDecodeError):
            row["status"] = "corrupt"
        result = load_result(directory)
        if result is not None:
            row.update(status=result.status, steps_done=result.steps_done, wall_time=result.wall_time)
        elif (directory / "DONE").exists():
            row["status"] = "corrupt"
        elif (directory / "checkpoint.pt").exists():
            with contextlib.suppress(Exception):
                row["steps_done"] = int(torch.load(directory / "checkpoint.pt", weights_only=False)["training"]
                                        ["step"])
        rows.append(row)
    return rows
