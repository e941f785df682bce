"""Every trial's numbers, one line per (study, row, seed), for people who redo the statistics.

``python -m reports.export --all --out per_seed.csv [--header "command: ..."]`` writes a CSV
whose first lines (``# ...``) say where the numbers come from: each study's launch (parent run
and git commit), the machine the trials recorded, the extra ``--header`` lines; then the
columns of :data:`COLUMNS` (metrics 0-100 for AP, 0-1 for PCC and IoU, counts for the rest; ``cpu``:
where the result was trained).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from orchestration.schema import default_tracking_uri
from reports.collect import StudyData, collect_study, list_studies, open_client
from reports.tables import Table

COLUMNS = ("study", "row", "seed", "status", "AP", "AP50", "AP75", "APs", "APm", "APl", "PCC", "PCC_spearman",
           "PCC_image", "pcc_n_mean", "top10_iou", "n_correct", "n_redundant", "n_error", "run_id", "reused_from",
           "trial_key", "git_commit", "cpu")


def per_seed_frame(data: StudyData) -> pd.DataFrame:
    """One line per trial of a study's launch, in grid-row then seed order; ``cpu``: the CPU model of
    the machine that trained the result ('' where it was not recorded)."""
    cpus = [json.loads(h)["cpu"] if h else "" for h in data.trials["host"]]
    t = data.trials.assign(study=data.study, cpu=cpus).sort_values(["row_index", "seed"])
    return t.reindex(columns=list(COLUMNS))


def machines_table(studies: list[StudyData]) -> Table:
    """Which CPU trained which seeds of each row (from :func:`per_seed_frame`'s ``cpu``)."""
    frame = pd.concat([per_seed_frame(d) for d in studies], ignore_index=True)
    frame["cpu"] = frame["cpu"].replace("", "not recorded")
    body = [[study, row, cpu, ",".join(str(int(s)) for s in sorted(g["seed"]))]
            for (study, row, cpu), g in frame.groupby(["study", "row", "cpu"], sort=False)]
    kinds = sorted(set(frame["cpu"]))
    return Table("machines", "Where each row's seeds were trained", ["Study", "Row", "CPU", "Seeds"], body,
                 [f"{len(kinds)} CPU kind(s): {'; '.join(kinds)}. 'not recorded': trained before trials tagged "
                  "their machine (tood.host)."])


def header_lines(studies: list[StudyData], extra: list[str]) -> list[str]:
    lines = [f"study {d.study}: launch {d.parent_name} (parent run {d.parent_id}), "
             f"git commit {', '.join(sorted(set(d.trials['git_commit']) - {''})) or 'unknown'}" for d in studies]
    hosts = {h for d in studies for h in d.trials.get("host", []) if h}
    for host in sorted(hosts):
        m = json.loads(host)
        lines.append(f"machine: {m['cpu']}, {m['cores']} logical cores, GPU {m['gpu']}; "
                     f"torch {m['torch']}, ray {m['ray']}, mlflow {m['mlflow']}")
    return lines + list(extra)


def write_csv(studies: list[StudyData], path: str | Path, extra: list[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.concat([per_seed_frame(d) for d in studies], ignore_index=True)
    with path.open("w") as f:
        for line in header_lines(studies, extra):
            f.write(f"# {line}\n")
        frame.to_csv(f, index=False, float_format="%.4f")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reports.export", description=__doc__.splitlines()[0])
    p.add_argument("studies", nargs="*", help="study names (default with --all: every study of the store)")
    p.add_argument("--all", action="store_true")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--header", action="append", default=[], help="an extra '# ' line (repeatable), e.g. the command")
    args = p.parse_args(argv)
    client = open_client(args.tracking_uri or default_tracking_uri())
    names = list_studies(client) if args.all else args.studies
    if not names:
        p.error("give study names or --all")
    print(write_csv([collect_study(client, s) for s in names], args.out, args.header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
