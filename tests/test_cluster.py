"""Tests for chaosnb.cluster and the Dask path of runs.sweep.

The tests cover the embedded LocalCluster: results match serial runs byte for byte, stage-1 runs come
first, and a failed run is reported while the others go on. They cover a real scheduler with two worker
processes, one of which is SIGKILLed mid-run; the scheduler reruns that configuration elsewhere, the rerun
resumes from its checkpoint, and every result matches a serial run byte for byte. They also cover the
``--scheduler`` flag, ``$CHAOSNB_SCHEDULER``, and the error for a scheduler that is not there. Every
address is on 127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from chaosnb import cli, cluster
from chaosnb.config import RunConfig
from chaosnb.runs import get, load_result, run_dir, sweep
from tests.test_runs import assert_same_numbers

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("data_root", "one_thread")

MLP = RunConfig(steps=30, lr=0.05, batch_size=8, eval_every=10)
# a tiny CNN perturbation run (its stage-1 run has the tangent map), and one whose stage-1 run diverges
PERTURBED = RunConfig(model="cnn", spectrum_method="dense", lr=0.05, steps=3, perturb_eps=0.1,
                      perturb_strategies=("random", "chaotic"), tangent_steps=(1, 3), snapshot_steps=(1,))
BAD_STAGE1 = RunConfig(model="cnn", spectrum_method="dense", lr=1e4, steps=5, perturb_eps=0.1,
                       perturb_strategies=("random",))


@pytest.fixture(scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("CHAOSNB_PROGRESS", "0")
    monkeypatch.delenv(cluster.SCHEDULER_ENV, raising=False)


def assert_same_bytes(config: RunConfig, a: Path, b: Path) -> None:
    """The stored result files of ``config`` in stores ``a`` and ``b`` are identical byte for byte."""
    for name in ("metrics.npz", "arrays.npz"):
        assert (run_dir(config, a) / name).read_bytes() == (run_dir(config, b) / name).read_bytes(), name


# ---------------------------------------------------------------------------------------------- local cluster
def test_local_cluster_sweep(tmp_path):
    """sweep(jobs=2) on the embedded LocalCluster: rows of the stage-1 runs first, then the configs in order;
    byte-identical to serial runs; a perturbation run starts after its stage-1 run finished; a run whose
    stage-1 run diverged is an error row with its hash and message while the others complete."""
    configs = [dataclasses.replace(MLP, momentum=0.5, seed=1), PERTURBED, BAD_STAGE1, dataclasses.replace(MLP, seed=2)]
    root = tmp_path / "dask"
    rows = sweep(configs, root=root, jobs=2, progress=False)
    expected = [PERTURBED.stage1(), BAD_STAGE1.stage1(), *configs]
    assert [h for h, _, _ in rows] == [c.run_hash() for c in expected]
    status = {h: s for h, s, _ in rows}
    assert status[BAD_STAGE1.stage1().run_hash()] == "diverged"
    bad = status[BAD_STAGE1.run_hash()]
    assert bad.startswith("error: RuntimeError: stage-1 run") and BAD_STAGE1.stage1().run_hash() in bad
    assert "diverged" in bad
    assert all(status[c.run_hash()] == "done" for c in expected if c not in (BAD_STAGE1, BAD_STAGE1.stage1()))
    assert all(wall > 0 for h, s, wall in rows if s == "done")

    stage1_done = (run_dir(PERTURBED.stage1(), root) / "DONE").stat().st_mtime_ns
    assert stage1_done <= (run_dir(PERTURBED, root) / "config.json").stat().st_mtime_ns
    serial = tmp_path / "serial"
    for config in (PERTURBED.stage1(), PERTURBED, configs[0], configs[3]):
        assert_same_numbers(load_result(run_dir(config, root)), get(config, serial, progress=False))
        assert_same_bytes(config, root, serial)


def test_a_failed_stage1_fails_its_perturbation_runs_without_computing(tmp_path):
    """The task of a perturbation run whose stage-1 task returned an error row returns an error naming
    that run, and touches nothing in the store."""
    payload = (PERTURBED.to_dict(), str(tmp_path), False, 200)
    row = cluster._task(payload, ("0123456789abcdef", "error: OSError: disk full", 0.0))
    assert row == (PERTURBED.run_hash(), "error: its stage-1 run 0123456789abcdef failed (error: OSError: disk full)",
                   0.0)
    assert not tmp_path.joinpath(PERTURBED.run_hash()).exists()


def test_unreachable_scheduler_is_a_clear_error(tmp_path, monkeypatch):
    """$CHAOSNB_SCHEDULER pointing at nothing: ClusterError naming the address and the variable, in bounded
    time (Dask's connect timeout), and nothing is computed."""
    import dask

    monkeypatch.setenv(cluster.SCHEDULER_ENV, "tcp://127.0.0.1:9")
    start = time.monotonic()
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        with pytest.raises(cluster.ClusterError, match=r"tcp://127\.0\.0\.1:9.*CHAOSNB_SCHEDULER"):
            sweep([MLP], root=tmp_path, jobs=1, progress=False)
    assert time.monotonic() - start < 30
    assert not any(tmp_path.iterdir())
    assert cluster.scheduler_address("") is None  # an empty --scheduler means the local cluster
    assert cluster.scheduler_address(" tcp://127.0.0.1:8786 ") == "tcp://127.0.0.1:8786"


def test_task_keys_name_the_run_and_the_store():
    """Two clients asking one scheduler for the same run in the same store share a task; the same run in
    another store is another task."""
    other = dataclasses.replace(MLP, seed=MLP.seed + 1)
    assert cluster.task_key(MLP, "/a") == cluster.task_key(MLP, "/a")
    assert MLP.run_hash() in cluster.task_key(MLP, "/a")
    assert len({cluster.task_key(MLP, "/a"), cluster.task_key(MLP, "/b"), cluster.task_key(other, "/a")}) == 3


# ---------------------------------------------------------------------------------------------- worker killed
# Loaded by each `dask worker` (--preload): every step sleeps 5 ms, so that a cheap run is still running
# when its worker is killed, and every resume from a checkpoint is logged as "<pid> <hash> <step>".
# (Dask executes a preload file more than once, in the same namespace: patch only once.)
PRELOAD = """
import os, time
from chaosnb.train import Training


def _patch(advance, load):
    def slow_advance(self):
        time.sleep(0.005)
        advance(self)

    def logged_load(self, state):
        with open(os.environ["CHAOSNB_TEST_RESUME_LOG"], "a") as fh:
            fh.write(f"{os.getpid()} {self.config.run_hash()} {state['step']}\\n")
        load(self, state)

    Training.advance, Training.load_state_dict, Training._test_patched = slow_advance, logged_load, True


if not getattr(Training, "_test_patched", False):
    _patch(Training.advance, Training.load_state_dict)
"""


def _holder_of(lock: Path, pids: list[int]) -> int | None:
    """The pid among ``pids`` that has ``lock`` open (the worker computing that run), from /proc."""
    for pid in pids:
        with_fds = Path(f"/proc/{pid}/fd")
        try:
            if any(os.readlink(fd) == str(lock.resolve()) for fd in with_fds.iterdir()):
                return pid
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    return None


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="finds the lock holder through /proc (Linux)")
def test_killed_worker_run_is_resumed_on_another_worker(tmp_path, monkeypatch, capsys):
    """A scheduler and two single-threaded workers as separate processes (the `dask` command line, no nanny,
    so a killed worker stays dead, like a lost node). The worker computing one run is SIGKILLed after that
    run's first checkpoint. The scheduler gives the task to the other worker, which takes the store lock
    (released by the kernel when the first worker died), resumes from the checkpoint and finishes; every run
    is byte-identical to a serial one. Then `chaosnb sweep --scheduler` on the same cluster reads them back."""
    root, every = tmp_path / "store", 20
    configs = [RunConfig(steps=300, lr=0.05, momentum=0.9, batch_size=8, eval_every=100, seed=s) for s in (1, 2, 3)]
    preload = tmp_path / "slow_steps.py"
    preload.write_text(PRELOAD)
    resume_log = tmp_path / "resumed.log"
    resume_log.touch()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "PYTHONWARNINGS": "ignore", "CHAOSNB_TEST_RESUME_LOG": str(resume_log), "CHAOSNB_PROGRESS": "0"}
    scheduler_file = tmp_path / "scheduler.json"
    dask_cli = [sys.executable, "-m", "dask"]
    procs: list[subprocess.Popen] = []
    logs = []

    def start(name: str, args: list[str]) -> subprocess.Popen:
        log = tmp_path / f"{name}.log"
        logs.append(log)
        with open(log, "wb") as fh:
            procs.append(subprocess.Popen(dask_cli + args, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT))
        return procs[-1]

    def tails() -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs if log.exists())

    try:
        start("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                            "--scheduler-file", str(scheduler_file)])
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert procs[0].poll() is None and time.monotonic() < deadline, tails()
            time.sleep(0.05)
        time.sleep(0.2)  # the file is written in one go, but let its writer finish
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        workers = [start(f"worker{i}", ["worker", address, "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1",
                                        "--no-dashboard", "--name", f"w{i}", "--death-timeout", "60",
                                        "--preload", str(preload)]) for i in range(2)]
        from distributed import Client

        with Client(address, timeout=30, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=90)

        result: dict = {}

        def run_sweep() -> None:
            try:
                result["rows"] = sweep(configs, root=root, progress=False, scheduler=address,
                                       checkpoint_every=every)
            except BaseException as err:  # noqa: BLE001 - re-raised in the test's thread
                result["error"] = err

        thread = threading.Thread(target=run_sweep, daemon=True)
        thread.start()
        victim, victim_config = None, None
        deadline = time.monotonic() + 90
        while victim is None:
            assert thread.is_alive() and time.monotonic() < deadline, (result, tails())
            for config in configs:
                if (run_dir(config, root) / "checkpoint.pt").exists():
                    lock = root / f".{config.run_hash()}.lock"
                    pid = _holder_of(lock, [w.pid for w in workers])
                    if pid is not None:
                        os.kill(pid, signal.SIGKILL)
                        victim, victim_config = pid, config
                        break
            time.sleep(0.002)
        killed = next(w for w in workers if w.pid == victim)
        assert killed.wait(30) == -signal.SIGKILL
        survivor = next(w for w in workers if w.pid != victim)
        thread.join(120)
        assert not thread.is_alive(), "the sweep did not finish within 120 s after the kill\n" + tails()
        assert "error" not in result, f"{result['error']!r}\n{tails()}"
        assert survivor.poll() is None

        # the command line on the same cluster: every run is read back from the store by the surviving worker
        sweep_file = tmp_path / "sweep.yaml"
        sweep_file.write_text("defaults: {steps: 300, lr: 0.05, momentum: 0.9, batch_size: 8, eval_every: 100}\n"
                              "runs: [{seed: 1}, {seed: 2}, {seed: 3}]\n")
        monkeypatch.setenv("CHAOSNB_RESULTS", str(root))
        capsys.readouterr()
        assert cli.main(["sweep", str(sweep_file), "--scheduler", address, "--quiet"]) == 0
        out = capsys.readouterr().out
        assert all(f"{c.run_hash()}  done" in out for c in configs), out
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)

    rows = result["rows"]
    assert [(h, s) for h, s, _ in rows] == [(c.run_hash(), "done") for c in configs], tails()
    resumed = [line.split() for line in resume_log.read_text().splitlines()]
    mine = [(int(pid), int(step)) for pid, run_hash, step in resumed if run_hash == victim_config.run_hash()]
    assert len(mine) == 1, (resumed, tails())
    pid, step = mine[0]
    assert pid == survivor.pid and 0 < step < victim_config.steps and step % every == 0
    assert not (run_dir(victim_config, root) / "checkpoint.pt").exists()

    serial = tmp_path / "serial"
    for config in configs:
        assert_same_numbers(load_result(run_dir(config, root)), get(config, serial, progress=False))
        assert_same_bytes(config, root, serial)
