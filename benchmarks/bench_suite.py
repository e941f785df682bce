"""How well a suite launch packed its trials.

Packing (``reports.packing``): the launch's wall time against the ideal = sum(trial times) /
slots; the goal is wall / ideal <= 1.10. What a launch would train (child runs, distinct
trainings, shared prefixes, trial-epochs) is `tood-ablate plan` (orchestration/plan.py).
Writes benchmarks/results/bench_suite_<name>.json (or --out).
Run: .venv/bin/python benchmarks/bench_suite.py <launch name> [--storage-path runs/ray] [--slots N]
     tood-ablate plan --all --json benchmarks/results/plan_suite_proxy.json   # counts, no training
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

from reports.packing import packing  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", help="launch name")
    p.add_argument("--storage-path")
    p.add_argument("--slots", type=int, help="concurrent trial slots (default: CPUs / --cpus-per-trial of the launch)")
    p.add_argument("--out", help="JSON file to write (default: benchmarks/results/bench_suite_<name>.json)")
    args = p.parse_args()
    out = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0))},
           "packing": packing(args.name, args.storage_path, args.slots)}
    path = Path(args.out) if args.out else ROOT / "benchmarks/results" / f"bench_suite_{args.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
