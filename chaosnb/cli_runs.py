"""``chaosnb run``, ``chaosnb sweep`` and ``chaosnb runs``: the experiment engine from the shell."""

from __future__ import annotations

import argparse
import dataclasses
import json
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
        if kind in ("list", "optional_int"):
            hint = "comma-separated" if kind == "list" else "int or none"
            parser.add_argument(flag, dest=f.name, default=None, help=f"{f.name} ({hint})")
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=None, help=f"{f.name} (default {f.default!r})")


def _flag_values(args: argparse.Namespace) -> dict:
    out = {}
    for f in dataclasses.fields(RunConfig):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        kind = _field_type(f)
        if kind == "list":
            items = [v for v in str(value).split(",") if v]
            value = [int(v) if v.lstrip("-").isdigit() else v for v in items]
        elif kind == "optional_int":
            value = None if str(value).lower() == "none" else int(value)
        out[f.name] = value
    return out


def load_config_file(path: str) -> list[dict]:
    """A YAML/JSON file holding one configuration (a mapping) or several (a list, or ``runs:``)."""
    data = yaml.safe_load(Path(path).read_text())
    if isinstance(data, dict) and "runs" in data:
        base = data.get("defaults", {})
        return [{**base, **item} for item in data["runs"]]
    if isinstance(data, dict):
        return [data]
    if isinstance(data, list):
        return data
    raise ConfigError(f"{path}: expected a mapping, a list of mappings, or 'runs:'")


def _configs(args: argparse.Namespace) -> list[RunConfig] | None:
    """The configurations of the file and flags, or None after printing why they are invalid."""
    try:
        dicts = load_config_file(args.config) if args.config else [{}]
        overrides = _flag_values(args)
        return [RunConfig.from_dict({**d, **overrides}) for d in dicts]
    except (ConfigError, TypeError) as err:
        print(f"error: invalid configuration: {err}", file=sys.stderr)
        return None


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
    from chaosnb.runs import sweep

    configs = _configs(args)
    if configs is None:
        return 2
    rows = sweep(configs, jobs=args.jobs, progress=not args.quiet, scheduler=args.scheduler)
    for run_hash, status, wall in rows:
        print(f"{run_hash}  {status:<8} {wall:8.1f} s")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from chaosnb.runs import list_runs, results_root

    rows = list_runs()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"results store: {results_root()}  ({len(rows)} runs)")
    print(f"{'hash':<16}  {'status':<8} {'steps':>15} {'wall s':>8}  config")
    for r in rows:
        steps = f"{r['steps_done']}/{r['steps'] if r['steps'] is not None else '?'}"
        wall = f"{r['wall_time']:.1f}" if r["wall_time"] is not None else "-"
        print(f"{r['hash']:<16}  {r['status']:<8} {steps:>15} {wall:>8}  {r['label']}")
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
    sw.add_argument("--scheduler", default=None, metavar="ADDRESS",
                    help="Dask scheduler to submit the runs to, e.g. tcp://10.0.0.5:8786 (default: $CHAOSNB_SCHEDULER; "
                         "unset: a local Dask cluster of --jobs processes)")
    add_config_flags(sw)
    sw.set_defaults(func=cmd_sweep, config_positional=True)
    runs = sub.add_parser("runs", help="list the results store")
    runs.add_argument("--json", action="store_true")
    runs.set_defaults(func=cmd_runs)
