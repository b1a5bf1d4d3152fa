"""Build the book: execute every notebook of ``_toc.yml`` with papermill, then ``jupyter-book build``.

Notebook sources are MyST markdown notebooks under ``book/`` (one ``parameters``-tagged cell whose
defaults are the quick profile). The driver converts them to ``.ipynb`` in a staging copy of the book,
executes them with papermill (``profile`` and any ``-p key value`` overrides injected), in parallel
processes that share finished runs through the results store, and builds the HTML with execution off,
so the book shows exactly the executed outputs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class NotebookFailed(RuntimeError):
    """A notebook raised while executing; the message names the notebook and the cell."""


@dataclass
class NotebookResult:
    name: str
    seconds: float
    error: str | None = None


def toc_entries(root: Path = PROJECT_ROOT) -> list[str]:
    """Every file named in ``_toc.yml`` (root first), without extension, relative to the book root."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    entries = [toc["root"]]

    def walk(items):
        for item in items or []:
            if "file" in item:
                entries.append(item["file"])
            walk(item.get("sections"))
            for part in item.get("parts", []) or []:
                walk(part.get("chapters"))
            walk(item.get("chapters"))

    walk(toc.get("chapters"))
    for part in toc.get("parts", []) or []:
        walk(part.get("chapters"))
    return entries


def is_notebook(path: Path) -> bool:
    """A MyST markdown file is a notebook when its front matter declares a kernelspec."""
    if path.suffix == ".ipynb":
        return True
    text = path.read_text()
    return text.startswith("---") and "kernelspec" in text.split("---", 2)[1]


def source_file(root: Path, entry: str) -> Path:
    for suffix in (".md", ".ipynb"):
        if (root / f"{entry}{suffix}").exists():
            return root / f"{entry}{suffix}"
    raise FileNotFoundError(f"_toc.yml names {entry!r} but neither {entry}.md nor {entry}.ipynb exists")


def stage(root: Path, staging: Path, keep: set[str] | None = None) -> list[Path]:
    """Copy the book into ``staging``; notebooks become unexecuted ``.ipynb``. Returns the notebooks.

    Staged notebooks named in ``keep`` (stems) that already exist are left as they are, so a partial rebuild
    (``--only``) keeps the executed outputs of the other pages."""
    import jupytext

    keep = keep or set()
    if staging.exists() and not keep:
        shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(root / name, staging / name)
    notebooks = []
    for entry in toc_entries(root):
        src = source_file(root, entry)
        dst = staging / src.relative_to(root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if is_notebook(src) and src.stem in keep and dst.with_suffix(".ipynb").exists():
            notebooks.append(dst.with_suffix(".ipynb"))
        elif is_notebook(src):
            nb = jupytext.read(src)
            nb.metadata.pop("jupytext", None)
            target = dst.with_suffix(".ipynb")
            jupytext.write(nb, target, fmt="ipynb")
            notebooks.append(target)
        else:
            shutil.copy2(src, dst)
    for extra in ("book/_static", "book/references.bib"):
        if (root / extra).exists() and not (staging / extra).exists():
            copy = shutil.copytree if (root / extra).is_dir() else shutil.copy2
            copy(root / extra, staging / extra)
    return notebooks


def execute_notebook(path: str, parameters: dict, cwd: str) -> NotebookResult:
    """Execute one staged notebook in place with papermill; errors are returned, not raised."""
    import papermill

    start = time.time()
    name = Path(path).stem
    try:
        papermill.execute_notebook(path, path, parameters=parameters, cwd=cwd, kernel_name="python3",
                                   progress_bar=False, log_output=False)
    except papermill.PapermillExecutionError as err:
        return NotebookResult(name, time.time() - start,
                              f"cell {err.exec_count} ({err.cell_index}): {err.ename}: {err.evalue}")
    except Exception as err:  # noqa: BLE001 - report every failure with the notebook's name
        return NotebookResult(name, time.time() - start, f"{type(err).__name__}: {err}")
    return NotebookResult(name, time.time() - start)


def absolute_path_variables(names: tuple[str, ...] = ("CHAOSNB_DATA", "CHAOSNB_RESULTS")) -> None:
    """Make relative data/results roots absolute: notebooks execute in the build tree, not the caller's cwd."""
    for name in names:
        value = os.environ.get(name)
        if value:
            os.environ[name] = str(Path(value).expanduser().resolve())


def precompute(profile: str, overrides: dict | None, jobs: int, scheduler: str | None = None) -> None:
    """Compute every run of the experiment catalogue at this profile (cached), on a Dask cluster: the one at
    ``scheduler`` (default ``$CHAOSNB_SCHEDULER``), else a local one of ``jobs`` processes (``jobs=1``: in
    this process; see :func:`chaosnb.runs.sweep`). Failed runs are listed with their hash and message; the
    others go on."""
    from chaosnb.cluster import describe, scheduler_address
    from chaosnb.experiments import all_configs, load_profile
    from chaosnb.runs import is_done, sweep

    address = scheduler_address(scheduler)
    configs = [c for c in all_configs(load_profile(profile, overrides)) if not is_done(c)]
    jobs = max(1, min(jobs, len(configs)))
    where = "this process" if address is None and jobs == 1 else describe(address, jobs)
    print(f"precomputing {len(configs)} run(s) on {where}", flush=True)
    start = time.time()
    if configs:
        rows = sweep(configs, jobs=jobs, progress=False, runs_bar=True, scheduler=address)
        for run_hash, status, _ in rows:
            if status.startswith("error"):
                print(f"  run {run_hash} failed: {status}", flush=True)
    print(f"  runs ready in {time.time() - start:.1f} s", flush=True)


def build(profile: str = "quick", build_dir: str | os.PathLike | None = None, only: list[str] | None = None,
          parameters: dict | None = None, jobs: int | None = None, html: bool = True, precompute_runs: bool = True,
          root: Path = PROJECT_ROOT) -> Path:
    """Execute the book's notebooks at ``profile`` and build the HTML; returns the HTML folder.

    Order: every run of the catalogue is computed first (``jobs`` processes, one torch thread each), then
    the notebooks execute in parallel (reading runs from the store), the front page last (it tabulates
    the verdicts the others stored), then ``jupyter-book build`` renders the executed notebooks.
    """
    from chaosnb.experiments import profile_names

    if profile not in profile_names():
        raise ValueError(f"unknown profile {profile!r}; valid profiles are: {', '.join(profile_names())}")
    build_dir = Path(build_dir) if build_dir else root / "_build" / profile
    staging = build_dir / "src"
    stems = [Path(entry).stem for entry in toc_entries(root)]
    # a partial rebuild re-stages the pages asked for and the front page, and keeps the others' outputs
    keep = set(stems) - set(only) - {stems[0]} if only else None
    notebooks = stage(root, staging, keep)
    if only:
        unknown = set(only) - {p.stem for p in notebooks}
        if unknown:
            raise ValueError(f"unknown notebook(s) {sorted(unknown)}; notebooks are: "
                             f"{', '.join(sorted(p.stem for p in notebooks))}")
    parameters = dict(parameters or {})
    params = {"profile": profile, **parameters}
    jobs = jobs or os.cpu_count() or 1
    verdicts = build_dir / "verdicts"
    if not only and verdicts.exists():
        shutil.rmtree(verdicts)
    os.environ.update({"CHAOSNB_VERDICTS": str(verdicts), "CHAOSNB_PROGRESS": "0"})
    absolute_path_variables()
    total = time.time()
    if precompute_runs:
        precompute(profile, parameters.get("overrides"), jobs)
    if jobs > 1:  # one BLAS thread per notebook kernel when several run at once
        os.environ.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    front = staging / f"{toc_entries(root)[0]}.ipynb"
    todo = [p for p in notebooks if (not only or p.stem in only) and p != front]
    print(f"executing {len(todo)} notebook(s) at profile {profile!r} with {jobs} process(es)", flush=True)
    started = time.time()
    failures = []
    with ProcessPoolExecutor(max_workers=max(1, min(jobs, len(todo)))) as pool:
        futures = [pool.submit(execute_notebook, str(p), params, str(p.parent)) for p in todo]
        results = [fut.result() for fut in futures]
    if front in notebooks:
        results.append(execute_notebook(str(front), params, str(front.parent)))
    for res in results:
        status = "FAILED " + res.error if res.error else "ok"
        print(f"  {res.name:<32} {res.seconds:7.1f} s  {status}", flush=True)
        if res.error:
            failures.append(f"{res.name}: {res.error}")
    if failures:
        raise NotebookFailed("notebook(s) failed:\n  " + "\n  ".join(failures))
    print(f"all notebooks executed in {time.time() - started:.1f} s", flush=True)
    if not html:
        return staging
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(staging), "--path-output", str(build_dir),
           "--warningiserror", "--keep-going"]
    print("building HTML:", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout[-6000:] + proc.stderr[-6000:])
        raise NotebookFailed(f"jupyter-book build failed (exit {proc.returncode})")
    out = build_dir / "_build" / "html"
    print(f"book built in {time.time() - total:.1f} s in total: {out / 'index.html'}")
    return out
