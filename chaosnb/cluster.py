"""Runs on a Dask cluster: the embedded ``LocalCluster`` (default) or an existing scheduler.

Each configuration is one task, ``chaosnb.runs._sweep_worker``, which calls ``runs.get`` on a worker. The
results store is the only state the tasks share. On a cluster it has to be one shared filesystem, mounted
at the same path on every node. The client resolves the store's path and passes it with every task.

* **Where.** By default the runs go to a ``LocalCluster`` on this machine: ``jobs`` worker processes with
  one thread each, and each run sets one torch thread. Otherwise they go to the scheduler at ``--scheduler
  ADDRESS`` or ``$CHAOSNB_SCHEDULER``, which was started elsewhere (``dask scheduler`` and ``dask worker``,
  or dask-jobqueue). There, each worker *thread* runs one run at a time. Tasks ask for no worker
  ``resources``, so any worker takes them: size the workers with ``--nthreads``, not with resources.
* **Order.** A perturbation run's task takes its stage-1 task's result as an argument, so Dask starts it
  only after the stage-1 run is finished. Stage-1 tasks are also submitted first, which gives them
  priority. If a stage-1 run failed, its perturbation runs are reported failed without recomputing it.
* **Keys.** A task's key is its configuration hash plus a digest of the store path (``task_key``).
  ``pure`` does not apply to an explicit key. Two clients that ask one scheduler for the same run in the
  same store therefore share one task. The same configuration written to another store is another task.
* **Failures.** A run that raises is returned as the row ``(hash, "error: ...", 0.0)`` and the others go
  on. ``retries`` is 0, because a Python error in a run is deterministic and a retry would only repeat it.
* **Workers that die.** When a worker dies mid-run (SIGKILL, lost node, out of memory), the scheduler
  reruns its task on another worker. It does this up to ``distributed.scheduler.allowed-failures`` times
  (``ALLOWED_FAILURES`` for the embedded cluster; set it in the scheduler's own config on a cluster).
  After that the run fails as ``KilledWorker``, which becomes an error row. The rerun takes the run's
  store lock; the kernel dropped the dead process's ``flock`` when the process died. The rerun then
  resumes from the last checkpoint, and its result is byte for byte the same as an uninterrupted run's
  (tests/test_cluster.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from chaosnb.config import RunConfig
from chaosnb.plan import priorities

SCHEDULER_ENV = "CHAOSNB_SCHEDULER"
ALLOWED_FAILURES = 3  # distributed.scheduler.allowed-failures of the embedded cluster (Dask's default)

Row = tuple[str, str, float]


class ClusterError(RuntimeError):
    """No Dask cluster to run on (unreachable scheduler); the message says what to do."""


def scheduler_address(scheduler: str | None = None) -> str | None:
    """The scheduler to use: ``scheduler`` when given, else ``$CHAOSNB_SCHEDULER``; None (or empty) means
    the embedded local cluster."""
    value = scheduler if scheduler is not None else os.environ.get(SCHEDULER_ENV, "")
    return value.strip() or None


def task_key(config: RunConfig, root: str) -> str:
    """The Dask key of a run: configuration hash + a digest of the results store it is written to."""
    return f"chaosnb-run-{config.run_hash()}-{hashlib.sha256(root.encode()).hexdigest()[:8]}"


@contextlib.contextmanager
def connect(scheduler: str | None, jobs: int) -> Iterator:
    """A ``distributed.Client``: on the scheduler at ``scheduler``, or on a new ``LocalCluster`` of ``jobs``
    single-threaded worker processes on 127.0.0.1, forked from this one where the platform can (closed again
    on exit). The connect timeout is Dask's ``distributed.comm.timeouts.connect``."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        timeout = dask.config.get("distributed.comm.timeouts.connect")
        try:
            client = Client(scheduler, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as err:
            raise ClusterError(
                f"could not connect to the Dask scheduler at {scheduler!r} (from --scheduler or ${SCHEDULER_ENV}) "
                f"within {timeout}: {err}. Start one (`dask scheduler`, then `dask worker ADDRESS --nthreads 1` "
                f"on each machine), or leave --scheduler and ${SCHEDULER_ENV} unset for a local cluster") from None
        try:
            yield client
        finally:
            client.close()
        return
    # Each periodic callback of a worker takes the GIL from the run's thread: the statistical profiler (every
    # 10 ms), the event-loop tick (20 ms), the memory (100 ms) and system (500 ms) monitors. On 2 loaded cores
    # they made the pure-Python parts of a run (the USPS parser) 2.4x slower than in a forked ProcessPool
    # worker; 1.2x with these settings.
    settings = {"distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
                "distributed.worker.profile.enabled": False, "distributed.admin.tick.interval": "1s",
                "distributed.worker.memory.monitor-interval": "1s",
                "distributed.admin.system-monitor.interval": "2s"}
    if "fork" in multiprocessing.get_all_start_methods():
        # forked workers start with this process's imports (as the ProcessPoolExecutor before them did); spawned
        # ones import torch again each, 10-25 s on 2 loaded cores, which dominated sweeps of cheap runs
        settings["distributed.worker.multiprocessing-method"] = "fork"
    with dask.config.set(settings):
        # everything on loopback; the HTTP server on a free port (8787 may be taken by another cluster)
        cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
    try:
        with Client(cluster, set_as_default=False) as client:
            yield client
    finally:
        cluster.close()


def preload_datasets(names: set[str]) -> None:
    """Load these datasets into this process (``data.load_dataset`` caches them), so that workers forked from
    it start with them; a dataset that does not load is left to the runs, which report the error."""
    from chaosnb.data import load_dataset

    for name in sorted(names):
        with contextlib.suppress(Exception):
            load_dataset(name)


def _task(payload: tuple, *after: Row) -> Row:
    """Run on a worker: ``runs._sweep_worker(payload)``, unless a run it needs (its stage-1 run) failed."""
    from chaosnb import runs

    for run_hash, status, _ in after:
        if status.startswith("error"):
            own = RunConfig.from_dict(payload[0]).run_hash()
            return own, f"error: its stage-1 run {run_hash} failed ({status})", 0.0
    return runs._sweep_worker(payload)


def submit_runs(client, configs: Sequence[RunConfig], payload: Callable[[RunConfig], tuple], root: str,
                finished: Callable[[RunConfig, Row], None]) -> dict[RunConfig, Row]:
    """Submit one task per configuration (perturbation runs after their stage-1 runs) and wait for all; the
    workers take runs by :func:`chaosnb.plan.priorities` (projected seconds of the run and of the longest run
    waiting for it: longest chains first). ``finished`` is called as each one ends (in completion order).
    Returns the row of every config."""
    from distributed import as_completed

    configs = list(dict.fromkeys(configs))
    wanted = set(configs)
    stage1 = {c.stage1() for c in configs if c.is_perturbation}
    ordered = ([c for c in configs if c in stage1] + [c for c in configs if c not in stage1 and not c.is_perturbation]
               + [c for c in configs if c.is_perturbation])
    rank = priorities(ordered)  # longest chains first (what chaosnb.plan's schedule projection assumes)
    futures: dict[RunConfig, object] = {}
    for config in ordered:
        after = [futures[config.stage1()]] if config.is_perturbation and config.stage1() in wanted else []
        futures[config] = client.submit(_task, payload(config), *after, key=task_key(config, root), retries=0,
                                        priority=round(rank[config]))
    by_key = {future.key: config for config, future in futures.items()}
    rows: dict[RunConfig, Row] = {}
    for future in as_completed(list(futures.values()), loop=client.loop):
        config = by_key[future.key]
        try:
            row = future.result()
        except Exception as err:  # noqa: BLE001 - KilledWorker, a lost scheduler, ...: reported, the rest go on
            row = (config.run_hash(), f"error: {type(err).__name__}: {err}", 0.0)
        rows[config] = row
        finished(config, row)
    return rows


def describe(scheduler: str | None, jobs: int) -> str:
    """Where the runs go, for log lines."""
    return f"the Dask scheduler at {scheduler}" if scheduler else f"a local Dask cluster of {jobs} process(es)"


def store_path(root: Path | str) -> str:
    return str(Path(root).expanduser().resolve())
