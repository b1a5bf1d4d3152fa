"""The results store: runs are computed once, written atomically, resumed after interruption, read back.

Layout of one run, named by the configuration's hash::

    $CHAOSNB_RESULTS/<hash>/config.json     canonical config, seed, data fingerprint, versions, torch threads
                           /checkpoint.pt   latest resumable state, framed with its sha256 (removed when done)
                           /metrics.npz     one array per metric, with its step index (<name>__step)
                           /arrays.npz      final parameters, stage-1 perturbation directions, ...
                           /DONE            written last: status, steps, wall time, data fingerprint, the sha256
                                            of config.json and the two .npz, and the sha256 of its own fields

Every file is verified when read. A directory without a valid DONE (missing, unreadable, edited, checksums
that do not match, or computed from other data than the data root holds now) is never read as a result: it is
resumed from its checkpoint when that verifies, else recomputed from step 0 (with a warning for a damaged
checkpoint). Concurrent requests for the same run (parallel notebooks or sweep workers) wait on a file lock
instead of computing it twice. Every run is computed with ONE torch thread, whichever entry point asks for it
(``chaosnb run``, ``sweep``, the book, a notebook), so one configuration always gives the same bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from chaosnb import __version__
from chaosnb.config import RunConfig, check_device_available
from chaosnb.data import DatasetNotFoundError, dataset_fingerprint, load_dataset
from chaosnb.perturb import STRATEGIES
from chaosnb.train import RunResult, Training

RESULTS_ENV = "CHAOSNB_RESULTS"
PROGRESS_ENV = "CHAOSNB_PROGRESS"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT_EVERY = 200
CHECKPOINT_SECONDS_ENV = "CHAOSNB_CHECKPOINT_SECONDS"
DEFAULT_CHECKPOINT_SECONDS = 600.0
"""A checkpoint is also written when this much wall time has passed since the last one (preemptible nodes)."""
RUN_THREADS = 1
"""Torch threads of every run: BLAS results depend on the thread count, so it is fixed (and recorded)."""
_CHECKPOINT_MAGIC = b"chaosnb-checkpoint-v1\n"


class ResultsStoreError(OSError):
    """The results store cannot be written (read-only, not a folder, ...); the message says what to set."""


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


def ensure_writable(root: Path) -> None:
    """Create the results store folder if needed and check that files can be written in it; otherwise raise
    :class:`ResultsStoreError` naming the folder, the reason and the variable to set."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=root, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ResultsStoreError(f"results store {root} is not writable ({err.strerror or err}); set "
                                f"{RESULTS_ENV} to a writable folder") from None


# ---------------------------------------------------------------------------------------------- reading
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fields_sha256(fields: dict) -> str:
    """sha256 of DONE's fields (canonical JSON, without the checksum itself)."""
    payload = json.dumps({k: v for k, v in fields.items() if k != "done_sha256"}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def current_data_fingerprint(dataset: str) -> str | None:
    """The fingerprint of ``dataset`` in today's data root, or None where it is not available (results can then
    still be read: they carry the fingerprint they were computed from)."""
    try:
        return dataset_fingerprint(dataset)
    except DatasetNotFoundError:
        return None


def verify_result(directory: Path) -> tuple[RunResult | None, str]:
    """(the finished run in ``directory``, "ok") or (None, why it is not usable): missing, partial, a damaged or
    edited file (every file is checked against DONE's checksums, DONE against its own), or "stale-data" when the
    data root now holds other data than the run was computed from."""
    try:
        if not (directory / "DONE").exists():
            return None, "partial"
        done = json.loads((directory / "DONE").read_text())
        if not isinstance(done, dict) or done.get("done_sha256") != _fields_sha256(done):
            return None, "corrupt"
        for name in ("metrics.npz", "arrays.npz", "config.json"):
            if _sha256(directory / name) != done["sha256"][name]:
                return None, "corrupt"
        recorded = json.loads((directory / "config.json").read_text())
        # records written before ``device`` existed are CPU runs (whatever $CHAOSNB_DEVICE says now)
        config = RunConfig.from_dict({"device": "cpu", **recorded["config"]})
        if config.run_hash() != directory.name:  # config.json altered: the numbers are not this config's
            return None, "corrupt"
        now = current_data_fingerprint(config.dataset)
        if now is not None and now != done["data_fingerprint"]:
            return None, "stale-data"
        with np.load(directory / "metrics.npz") as data:
            metrics = {k: data[k] for k in data.files}
        with np.load(directory / "arrays.npz") as data:
            arrays = {k: data[k] for k in data.files}
        result = RunResult(config, metrics, arrays, done["status"], done["steps_done"], done.get("diverged_at"),
                           done.get("wall_time", 0.0), done.get("meta", {}))
        return result, "ok"
    except (OSError, ValueError, KeyError, TypeError, AttributeError, json.JSONDecodeError):
        return None, "corrupt"


def load_result(directory: Path) -> RunResult | None:
    """The finished run in ``directory``, or None when it is missing, partial, corrupted or stale (see
    :func:`verify_result`)."""
    return verify_result(directory)[0]


def is_done(config: RunConfig, root: Path | None = None) -> bool:
    return load_result(run_dir(config, root)) is not None


def checkpoint_bytes(config: RunConfig, training_state: dict, data_fingerprint: str) -> bytes:
    """A checkpoint file: magic line, sha256 of the payload, then the ``torch.save`` payload."""
    payload = _torch_bytes({"hash": config.run_hash(), "data_fingerprint": data_fingerprint,
                            "training": training_state})
    return _CHECKPOINT_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def read_checkpoint(path: Path) -> dict:
    """The verified checkpoint at ``path``; ValueError when it is damaged (framing or checksum), OSError when
    unreadable."""
    data = path.read_bytes()
    if not data.startswith(_CHECKPOINT_MAGIC):
        raise ValueError("not a chaosnb checkpoint (no header)")
    digest, _, payload = data[len(_CHECKPOINT_MAGIC):].partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise ValueError("checksum mismatch")
    return torch.load(io.BytesIO(payload), weights_only=False)


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


@contextlib.contextmanager
def run_threads(threads: int = RUN_THREADS):
    """Torch's intra-op thread count fixed for the duration of a run (restored afterwards)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def device_info(device: str) -> dict:
    """Where a run computes, for its config.json: the device's name, torch's version and the CUDA
    version torch was built with (None on a CPU-only build)."""
    info = {"type": device, "torch_version": torch.__version__, "cuda_version": torch.version.cuda}
    if device == "cuda":
        index = torch.cuda.current_device()
        info.update(name=torch.cuda.get_device_name(index), capability=list(torch.cuda.get_device_capability(index)),
                    cudnn_version=torch.backends.cudnn.version())
    else:
        info["name"] = platform.processor() or platform.machine()
    return info


@contextlib.contextmanager
def device_settings(device: str):
    """On a GPU: no TF32 (cuDNN convolutions default to it, ~1e-3 relative error) and deterministic kernels
    (cuDNN autotuning off), restored afterwards; nothing changes on the CPU."""
    if device != "cuda":
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    old = (cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic, cudnn.benchmark)
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic, cudnn.benchmark = old


def _checkpoint_seconds() -> float:
    value = os.environ.get(CHECKPOINT_SECONDS_ENV)
    return float(value) if value else DEFAULT_CHECKPOINT_SECONDS


def _resume(training: Training, checkpoint: Path, config: RunConfig, fingerprint: str) -> bool:
    """Load a verified checkpoint of this configuration and data into ``training``; a damaged one is reported and
    removed (the run then starts from step 0). Returns whether it resumed."""
    if not checkpoint.exists():
        return False
    try:
        state = read_checkpoint(checkpoint)
        if state.get("hash") != config.run_hash() or state.get("data_fingerprint") != fingerprint:
            raise ValueError("it belongs to another configuration or other data")
        training.load_state_dict(state["training"])
        return True
    except Exception as err:  # noqa: BLE001 - any unusable checkpoint means: start again
        warnings.warn(f"run {config.run_hash()}: checkpoint {checkpoint} is damaged or foreign ({err}); "
                      "restarting the run from step 0", RuntimeWarning, stacklevel=3)
        checkpoint.unlink(missing_ok=True)
        return False


def _compute(config: RunConfig, directory: Path, root: Path | None, checkpoint_every: int,
             progress: bool | None, stop_after: int | None = None) -> RunResult | None:
    with run_threads(), device_settings(config.device):
        fingerprint = load_dataset(config.dataset).fingerprint
        atomic_write_json(directory / "config.json", {
            "config": config.to_dict(), "hash": config.run_hash(), "seed": config.seed, "label": config.label(),
            "data_fingerprint": fingerprint, "chaosnb_version": __version__, "torch_version": torch.__version__,
            "torch_threads": torch.get_num_threads(), "device": device_info(config.device)})
        directions = _stage1_directions(config, root, progress) if config.is_perturbation else None
        training = Training(config, directions)
        checkpoint = directory / "checkpoint.pt"
        if not _resume(training, checkpoint, config, fingerprint):
            training = Training(config, directions)  # a failed load may have left a partial state behind
        bar = None
        if _progress_enabled(progress):
            from tqdm.auto import tqdm

            bar = tqdm(total=config.steps, initial=training.step, desc=config.label(), unit="step",
                       dynamic_ncols=True, file=sys.stderr, leave=False)
        steps_this_call, every_seconds, last_saved = 0, _checkpoint_seconds(), time.monotonic()
        while not training.finished:
            training.advance()
            steps_this_call += 1
            if bar is not None:
                bar.update(1)
            if training.finished:
                break
            if training.step % checkpoint_every == 0 or time.monotonic() - last_saved >= every_seconds:
                atomic_write_bytes(checkpoint, checkpoint_bytes(config, training.state_dict(), fingerprint))
                last_saved = time.monotonic()
            if stop_after is not None and steps_this_call >= stop_after:
                if bar is not None:
                    bar.close()
                return None
        if bar is not None:
            bar.close()
        result = training.result()
        result.meta["data_fingerprint"] = fingerprint
        _write_result(directory, result, fingerprint)
        with contextlib.suppress(FileNotFoundError):
            checkpoint.unlink()
        return result


def _write_result(directory: Path, result: RunResult, data_fingerprint: str) -> None:
    (directory / "DONE").unlink(missing_ok=True)
    metrics, arrays = _npz_bytes(result.metrics), _npz_bytes(result.arrays)
    atomic_write_bytes(directory / "metrics.npz", metrics)
    atomic_write_bytes(directory / "arrays.npz", arrays)
    done = {"status": result.status, "steps_done": result.steps_done, "diverged_at": result.diverged_at,
            "wall_time": result.wall_time, "meta": result.meta, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "data_fingerprint": data_fingerprint,
            "sha256": {"metrics.npz": hashlib.sha256(metrics).hexdigest(),
                       "arrays.npz": hashlib.sha256(arrays).hexdigest(),
                       "config.json": _sha256(directory / "config.json")}}
    done["done_sha256"] = _fields_sha256(done)
    atomic_write_json(directory / "DONE", done)


def get(config: RunConfig, root: Path | None = None, *, checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
        progress: bool | None = None, recompute: bool = False) -> RunResult:
    """The result of ``config``: read from the store when finished, else computed (resuming if possible).

    A result computed from other data than the data root holds now ("stale-data") is recomputed, with a warning.
    Raises :class:`ResultsStoreError` (one line: what and where) when the store cannot be written."""
    directory = run_dir(config, root)
    if not recompute:
        cached = load_result(directory)
        if cached is not None:
            return cached
    load_dataset(config.dataset)  # a missing or damaged dataset fails here, before the store is touched
    check_device_available(config.device)  # --device cuda without a GPU: ConfigError, before the store is touched
    ensure_writable(directory.parent)
    with _locked(directory.parent / f".{directory.name}.lock"):
        if not recompute:
            cached, why = verify_result(directory)  # another process may have finished it while we waited
            if cached is not None:
                return cached
            if why == "stale-data":
                warnings.warn(f"run {directory.name} was computed from other data than {config.dataset!r} in "
                              "today's data root: computing it again", RuntimeWarning, stacklevel=2)
                shutil.rmtree(directory)
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
    """One row per run directory: hash, label, status (done / diverged / partial / corrupt / stale-data), steps,
    wall time."""
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
        result, why = verify_result(directory)
        if result is not None:
            row.update(status=result.status, steps_done=result.steps_done, wall_time=result.wall_time)
        elif why != "partial":
            row["status"] = why
        elif (directory / "checkpoint.pt").exists():
            with contextlib.suppress(Exception):
                row["steps_done"] = int(read_checkpoint(directory / "checkpoint.pt")["training"]["step"])
        rows.append(row)
    return rows
