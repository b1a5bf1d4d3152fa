"""Where a profile's time goes: every run of the book at a profile, grouped by kind, measured (the wall time
recorded in the results store) beside the projection of ``chaosnb plan`` (chaosnb.plan.RATES).

    CHAOSNB_RESULTS=_build/results .venv/bin/python benchmarks/profile_time.py --profile quick

Prints one row per kind: runs, steps, measured wall seconds per run (min-max) and in total, projected total, and
the ratio; runs missing from the store are counted as missing. Used for the README's per-kind table.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys

from chaosnb.config import RunConfig
from chaosnb.experiments import all_configs, load_profile
from chaosnb.plan import run_cost
from chaosnb.runs import list_runs, results_root


def kind(config: RunConfig) -> str:
    """A readable group for a run: model, what it computes, steps."""
    what = ("perturbation ensembles" if config.is_perturbation
            else "tangent map" + (", CGD" if config.optimizer == "cgd" else "") if config.uses_tangent_map
            else f"CGD, spectrum every step (batch {config.batch_size})" if config.optimizer == "cgd"
            else f"spectra every {config.spectrum_every} steps" if config.spectrum_every
            else "SGD baselines")
    momentum = ", momentum" if config.momentum and config.uses_tangent_map else ""
    return f"{config.model.upper()}, {what}{momentum}, {config.steps} steps"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--overrides", default=None, help="JSON merged into the profile")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    configs = list(dict.fromkeys(all_configs(load_profile(args.profile, json.loads(args.overrides or "null")))))
    walls = {row["hash"]: row for row in list_runs(results_root())}
    groups: dict[str, list] = collections.defaultdict(list)
    for config in configs:
        row = walls.get(config.run_hash())
        wall = row["wall_time"] if row and row["status"] in ("done", "diverged") else None
        groups[kind(config)].append((wall, run_cost(config).seconds, row["status"] if row else "missing"))
    table = []
    for name, items in groups.items():
        measured = [w for w, _, _ in items if w is not None]
        table.append({"kind": name, "runs": len(items), "missing": len(items) - len(measured),
                      "diverged": sum(s == "diverged" for _, _, s in items),
                      "min_s": min(measured, default=None), "max_s": max(measured, default=None),
                      "measured_s": sum(measured), "projected_s": sum(p for _, p, _ in items)})
    table.sort(key=lambda r: -r["measured_s"])
    if args.json:
        json.dump(table, sys.stdout, indent=2)
        return 0
    print(f"{'runs of profile ' + repr(args.profile):70} {'n':>3} {'per run s':>12} {'total min':>9} "
          f"{'projected':>9} {'ratio':>6}")
    for r in table:
        per = f"{r['min_s']:.0f}-{r['max_s']:.0f}" if r["min_s"] is not None else "-"
        ratio = f"{r['measured_s'] / r['projected_s']:.2f}" if r["measured_s"] and r["projected_s"] else "-"
        note = f" ({r['missing']} missing)" if r["missing"] else ""
        note += f" ({r['diverged']} diverged)" if r["diverged"] else ""
        print(f"{r['kind'] + note:70} {r['runs']:>3} {per:>12} {r['measured_s'] / 60:>9.1f} "
              f"{r['projected_s'] / 60:>9.1f} {ratio:>6}")
    measured, projected = sum(r["measured_s"] for r in table), sum(r["projected_s"] for r in table)
    print(f"{'all runs':70} {sum(r['runs'] for r in table):>3} {'':>12} {measured / 60:>9.1f} {projected / 60:>9.1f}"
          f" {measured / projected if projected else 0:>6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
