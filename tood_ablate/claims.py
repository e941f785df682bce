"""``tood-ablate claims``: where the paper's claims stand in a store, between or after the rounds of
``tood-ablate run --until-decided``, without training anything.

It prints the table that ``run --until-decided`` writes when it ends (per claim: the test at the
seeds so far, its verdict, whether more seeds can still decide it and how many the observed effect
projects), read now from the latest launch of each study, and the (row, seed) trials the next round
would add. With ``--out`` the table is also written as markdown. Use it on a launch that was
stopped, on a committed store, or while a round runs (a row's unfinished seeds count as not there).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestration.grid import load_grid
from orchestration.launch import suite_grids
from orchestration.schema import default_tracking_uri
from reports.claim_tests import LOOKS
from reports.collect import NoRunsError
from reports.formats import to_markdown
from reports.paired_tests import ALPHA
from tood.config import ConfigError
from tood_ablate.sequential import claims_state, finished_seeds, parse_looks, row_seeds_for_round, seed_design


def next_round_trials(grids: list, studies: list, plan, first: int) -> dict[str, list[int]]:
    """study/row -> the seeds the next round would train: those it asks for (or that the first look
    lacks) that have no finished trial yet. Empty when the plan is done."""
    have = finished_seeds(studies)
    out = {}
    for key, seeds in row_seeds_for_round(grids, studies, plan, first).items():
        study, row = key.split("/", 1)
        new = [s for s in seeds if s not in have.get((study, row), set())]
        if new:
            out[key] = new
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tood-ablate claims", description=__doc__.splitlines()[0].split(": ", 1)[-1],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("grid", nargs="*", help="grid files, as for `run`")
    p.add_argument("--all", action="store_true", help="every paper study in experiments/, as for `run --all`")
    p.add_argument("--tracking-uri", help="the store (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlruns.db)")
    p.add_argument("--max-seeds", type=int, default=12, help="as given to `run --until-decided`")
    p.add_argument("--looks", default=",".join(map(str, LOOKS)), help="as given to `run --until-decided`")
    p.add_argument("--alpha", type=float, default=ALPHA, help="as given to `run --until-decided`")
    p.add_argument("--out", help="also write the table as markdown to this file")
    args = p.parse_args(argv)
    try:
        if bool(args.grid) == bool(args.all):
            raise ConfigError("give grid files or --all (expected one of the two)")
        design = seed_design(parse_looks(args.looks), args.max_seeds, args.alpha)
        grids = [load_grid(g) for g in (suite_grids() if args.all else args.grid)]
        uri = args.tracking_uri or default_tracking_uri()
        studies, plan, table = claims_state(uri, grids, design, args.max_seeds, args.alpha)
        if not studies:
            raise NoRunsError(f"no launch of {', '.join(g.study for g in grids)} at tracking URI {uri}")
    except (ConfigError, NoRunsError) as e:
        print(f"tood-ablate claims: error: {e}", file=sys.stderr)
        return 2
    text = to_markdown(table)
    print(text)
    upcoming = next_round_trials(grids, studies, plan, design[0])
    if upcoming:
        print(f"The next round adds {sum(map(len, upcoming.values()))} (row, seed) trials "
              "(trials identical across studies train once):")
        for key, seeds in upcoming.items():
            print(f"  {key}: seeds {','.join(map(str, seeds))}")
    else:
        print("No round is left: every claim is decided, out of seeds or not decidable within --max-seeds.")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
