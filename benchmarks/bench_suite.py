"""How well a suite launch packed its trials, and how many trainings dedup saves.

Packing (``reports.packing``): the launch's wall time against the ideal = sum(trial times) /
slots; the goal is wall / ideal <= 1.10. Trainings with and without dedup are counted from the grids: every
(study, row, seed) without, the distinct trial keys with.
Writes benchmarks/results/bench_suite_<name>.json (or --out).
Run: .venv/bin/python benchmarks/bench_suite.py <launch name> [--storage-path runs/ray] [--slots N]
     .venv/bin/python benchmarks/bench_suite.py --count-only   # dedup counts of `--all` only
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestration.grid import expand, load_grid  # noqa: E402
from orchestration.launch import suite_grids  # noqa: E402
from orchestration.suite import unique_trials  # noqa: E402
from reports.packing import packing  # noqa: E402


def dedup_counts(grid_paths: list[Path], seeds: list[int] | None = None) -> dict:
    """Trainings of the grids with and without dedup (the grid files' own seeds by default)."""
    specs = [expand(load_grid(p), "proxy", seeds) for p in grid_paths]
    unique = unique_trials(specs)
    return {"grids": [str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in grid_paths],
            "without_dedup": sum(len(s) for s in specs), "with_dedup": len(unique),
            "per_study": {s[0].study: len(s) for s in specs}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", nargs="?", help="launch name (omit with --count-only)")
    p.add_argument("--storage-path")
    p.add_argument("--slots", type=int, help="concurrent trial slots (default: CPUs / --cpus-per-trial of the launch)")
    p.add_argument("--count-only", action="store_true")
    p.add_argument("--out", help="JSON file to write (default: benchmarks/results/bench_suite_<name>.json)")
    args = p.parse_args()
    out = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0))},
           "dedup_all": dedup_counts(suite_grids(ROOT / "experiments"))}
    if not args.count_only:
        if not args.name:
            p.error("a launch name is needed (or --count-only)")
        out["packing"] = packing(args.name, args.storage_path, args.slots)
    path = Path(args.out) if args.out else ROOT / "benchmarks/results" / f"bench_suite_{args.name or 'counts'}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
