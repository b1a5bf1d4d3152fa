"""``chaosnb run``, ``chaosnb sweep`` and ``chaosnb runs``: the experiment engine from the shell."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

import yaml

from chaosnb.config import ConfigError, RunConfig


def _field_type(f: dataclasses.Field):
    text = str(f.type)
    if text.startswith("tuple"):
        return "list"
    if "int | None" in text:
        return "optional_int"
    return {"str": str, "int": int, "float": float}.get(text, str)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--field`` flag per RunConfig field (lists as comma-separated values)."""
    for f in dataclasses.fields(RunConfig):
        kind = _field_type(f)
        flag = "--" + f.name.replace("_", "-")
        if f.name == "device":
            parser.add_argument(flag, dest=f.name, default=None, help="where the run computes: cpu or cuda (default: "
                                "$CHAOSNB_DEVICE, else cpu); cuda is part of the run's hash")
        elif kind in ("list", "optional_int"):
            hint = "comma-separated" if kind == "list" else "int or none"
            parser.add_argument(flag, dest=f.name, default=None, help=f"{f.name} ({hint})")
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=None, help=f"{f.name} (default {f.default!r})")


def _flag_values(args: argparse.Namespace) -> dict:
    """RunConfig fields given as flags; list flags are comma-separated, ``--prune-k`` takes an int or ``none``."""
    out = {}
    for f in dataclasses.fields(RunConfig):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        kind = _field_type(f)
        if kind == "list":
            items = [v.strip() for v in str(value).split(",") if v.strip()]
            value = [int(v) if v.lstrip("-").isdigit() else _number_or_text(v) for v in items]
        elif kind == "optional_int":
            text = str(value).strip().lower()
            if text != "none" and not text.lstrip("-").isdigit():
                raise ConfigError(f"{f.name}: must be an integer or 'none', got {value!r} (flag --"
                                  f"{f.name.replace('_', '-')})")
            value = None if text == "none" else int(text)
        out[f.name] = value
    return out


def _number_or_text(text: str):
    try:
        return float(text)
    except ValueError:
        return text


class _Loader(yaml.SafeLoader):
    """YAML 1.2 floats: ``1e-3`` is a number (PyYAML's YAML 1.1 rules read it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def load_config_file(path: str) -> list:
    """A YAML/JSON file holding one configuration (a mapping) or several (a list, or ``runs:`` + ``defaults:``).

    Returns the raw entries (validated by :func:`_configs`); raises ConfigError naming the file when it is missing,
    unreadable, not YAML, or of another shape."""
    file = Path(path)
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"configuration file {path} cannot be read: {err}") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"configuration file {path} is not valid YAML{at}: {problem}") from None
    if isinstance(data, dict) and "runs" in data:
        base = data.get("defaults") or {}
        if not isinstance(base, dict) or not isinstance(data["runs"], list):
            raise ConfigError(f"{path}: 'defaults' must be a mapping and 'runs' a list of mappings")
        return [{**base, **item} if isinstance(item, dict) else item for item in data["runs"]]
    if isinstance(data, dict):
        return [data]
    if isinstance(data, list) and data:
        return data
    raise ConfigError(f"{path}: expected a mapping, a non-empty list of mappings, or 'runs:' (got "
                      f"{type(data).__name__})")


def _configs(args: argparse.Namespace) -> list[RunConfig] | None:
    """The configurations of the file and flags, all validated before any run starts; or None after printing
    every invalid entry (by its index in the file) on stderr."""
    source = getattr(args, "config", None)
    try:
        entries = load_config_file(source) if source else [{}]
        overrides = _flag_values(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return None
    configs, errors = [], []
    for index, entry in enumerate(entries):
        try:
            if not isinstance(entry, dict):
                raise ConfigError(f"expected a mapping of field: value, got {type(entry).__name__} {entry!r}")
            configs.append(RunConfig.from_dict({**entry, **overrides}))
        except (ConfigError, TypeError) as err:
            errors.append(f"entry {index}: {err}" if source else str(err))
    if errors:
        where = f" in {source}" if source else ""
        print(f"error: invalid configuration{where} ({len(errors)} of {len(entries)} entries):", file=sys.stderr)
        for line in errors:
            print(f"  {line}", file=sys.stderr)
        return None
    return configs


def cmd_run(args: argparse.Namespace) -> int:
    from chaosnb.runs import get, run_dir

    configs = _configs(args)
    if configs is None:
        return 2
    for config in configs:
        result = get(config, progress=not args.quiet, recompute=args.recompute)
        print(f"{config.run_hash()}  {result.status:<8} {result.steps_done:>7} steps  "
              f"{result.wall_time:8.1f} s  {config.label()}  -> {run_dir(config)}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from chaosnb.cluster import ClusterError
    from chaosnb.config import check_device_available
    from chaosnb.data import load_dataset
    from chaosnb.runs import ensure_writable, results_root, sweep

    if args.jobs is not None and args.jobs < 1:
        print(f"error: --jobs must be a positive number of processes, got {args.jobs}", file=sys.stderr)
        return 2
    configs = _configs(args)
    if configs is None:
        return 2
    if args.dry_run:  # nothing is computed, loaded or written: the runs (stage-1 runs first) and their cost
        from chaosnb.plan import format_plan, plan

        stage1 = [c.stage1() for c in configs if c.is_perturbation]
        print(format_plan(plan([*stage1, *configs]), f"dry run of {args.config}: every run of the sweep, projected"))
        return 0
    for dataset in sorted({c.dataset for c in configs}):
        load_dataset(dataset)  # a missing or damaged dataset: one line, before any run starts
    for device in sorted({c.device for c in configs}):
        check_device_available(device)  # --device cuda without a GPU: one line (exit 2), before any run starts
    ensure_writable(results_root())
    try:
        rows = sweep(configs, jobs=args.jobs, progress=not args.quiet, scheduler=args.scheduler)
    except ClusterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    labels = {c.run_hash(): c.label() for c in configs}
    for run_hash, status, wall in rows:
        print(f"{run_hash}  {status.split(':')[0]:<8} {wall:8.1f} s  {labels.get(run_hash, '(stage 1)')}")
    failed = [(h, status) for h, status, _ in rows if status.startswith("error")]
    if failed:
        print(f"\n{len(failed)} of {len(rows)} run(s) failed:", file=sys.stderr)
        print(f"{'hash':<16}  error", file=sys.stderr)
        for run_hash, status in failed:
            print(f"{run_hash:<16}  {status.removeprefix('error: ')}", file=sys.stderr)
        return 1
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from chaosnb.runs import list_runs, results_root

    rows = list_runs()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"results store: {results_root()}  ({len(rows)} runs)")
    print(f"{'hash':<16}  {'status':<10} {'steps':>15} {'wall s':>8}  config")
    for r in rows:
        steps = f"{r['steps_done']}/{r['steps'] if r['steps'] is not None else '?'}"
        wall = f"{r['wall_time']:.1f}" if r["wall_time"] is not None else "-"
        print(f"{r['hash']:<16}  {r['status']:<10} {steps:>15} {wall:>8}  {r['label']}")
    return 0


def add_subcommands(sub) -> None:
    run = sub.add_parser("run", help="compute (or read from the cache) one or more run configurations")
    run.add_argument("--config", help="YAML/JSON file with one configuration, a list, or 'runs:' + 'defaults:'")
    run.add_argument("--recompute", action="store_true", help="discard a cached result and compute again")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(run)
    run.set_defaults(func=cmd_run)
    sw = sub.add_parser("sweep", help="run many configurations in parallel processes")
    sw.add_argument("config", help="YAML/JSON file with a list of configurations (or 'runs:' + 'defaults:')")
    sw.add_argument("--jobs", type=int, default=None, help="parallel processes (default: number of cores)")
    sw.add_argument("--quiet", action="store_true")
    sw.add_argument("--dry-run", action="store_true",
                    help="compute nothing: list the runs (stage-1 runs included) with their projected time and memory")
    sw.add_argument("--scheduler", default=None, metavar="ADDRESS",
                    help="Dask scheduler to submit the runs to, e.g. tcp://10.0.0.5:8786 (default: $CHAOSNB_SCHEDULER; "
                         "unset: a local Dask cluster of --jobs processes)")
    add_config_flags(sw)
    sw.set_defaults(func=cmd_sweep, config_positional=True)
    runs = sub.add_parser("runs", help="list the results store")
    runs.add_argument("--json", action="store_true")
    runs.set_defaults(func=cmd_runs)
