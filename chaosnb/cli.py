"""The ``chaosnb`` command line: ``info``, ``run``, ``sweep``, ``runs``, ``book``, ``plan``."""

from __future__ import annotations

import argparse
import platform
import sys

from chaosnb import cli_runs, plan


def cmd_info(args: argparse.Namespace) -> int:
    import torch
    import torchvision

    from chaosnb import __version__
    from chaosnb.data import DATA_ENV, available_datasets, data_root
    from chaosnb.models import build_model, num_parameters
    from chaosnb.runs import RESULTS_ENV, results_root

    print(f"chaosnb {__version__}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}")
    print(f"data root: {data_root()}  ({_origin(DATA_ENV)})")
    for name, found in available_datasets().items():
        if isinstance(found, str):
            print(f"  {name}: NOT FOUND - {found}")
        else:
            print(f"  {name}: {found.n_train} train / {found.n_test} test images, 16x16, "
                  f"mean {found.mean:.4f}, std {found.std:.4f}")
    for model in ("mlp", "cnn"):
        print(f"model {model}: {num_parameters(build_model(model))} parameters")
    print(f"results store: {results_root()}  ({_origin(RESULTS_ENV)})")
    return 0


def _origin(variable: str) -> str:
    import os

    return f"from ${variable}" if os.environ.get(variable) else f"the default; set ${variable} to change it"


def _parse_value(text: str):
    import yaml

    return yaml.safe_load(text)


def cmd_book(args: argparse.Namespace) -> int:
    import os

    from chaosnb.book import NotebookFailed, build
    from chaosnb.config import DEVICE_ENV, RunConfig, check_device_available

    if args.device:  # the notebooks' kernels and the run workers inherit it: every RunConfig built there uses it
        os.environ[DEVICE_ENV] = args.device
    check_device_available(RunConfig().device)  # also catches CHAOSNB_DEVICE=cuda on a machine without a GPU
    params = {key: _parse_value(value) for key, value in (args.param or [])}
    try:
        build(args.profile, args.build_dir, only=args.only, parameters=params, jobs=args.jobs,
              html=not args.no_html, precompute_runs=not args.no_precompute, scheduler=args.scheduler)
    except NotebookFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chaosnb", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, data root, datasets found, model sizes")
    info.set_defaults(func=cmd_info)
    book = sub.add_parser("book", help="execute the notebooks with papermill and build the HTML book")
    book.add_argument("--profile", default="quick", choices=["smoke", "quick", "paper"])
    book.add_argument("--build-dir", default=None, help="default: _build/<profile>")
    book.add_argument("--only", nargs="+", help="execute only these notebooks (by file stem)")
    book.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                      help="override a notebook parameter (YAML value), as papermill -p")
    book.add_argument("--jobs", type=int, default=None, help="parallel notebooks (default: cores)")
    book.add_argument("--no-html", action="store_true", help="execute only, skip jupyter-book build")
    book.add_argument("--no-precompute", action="store_true",
                      help="do not compute the catalogue's runs up front (notebooks compute what they miss)")
    book.add_argument("--scheduler", default=None, metavar="ADDRESS",
                      help="Dask scheduler to compute the runs on (default: $CHAOSNB_SCHEDULER, else a local cluster)")
    book.add_argument("--device", default=None, choices=["cpu", "cuda"],
                      help="where the runs compute (default: $CHAOSNB_DEVICE, else cpu); part of a run's hash for cuda")
    book.set_defaults(func=cmd_book)
    cli_runs.add_subcommands(sub)
    plan.add_subcommand(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand. Bad input (data, results store, configuration) ends in one line on stderr and exit code
    1 (2 for an invalid configuration), never in a traceback."""
    from chaosnb.cluster import ClusterError
    from chaosnb.config import ConfigError
    from chaosnb.data import DatasetError
    from chaosnb.runs import ResultsStoreError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        print(f"error: invalid configuration: {err}", file=sys.stderr)
        return 2
    except (DatasetError, ResultsStoreError, ClusterError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
