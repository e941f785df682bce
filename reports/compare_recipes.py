"""The paper's claims under two or more recipes, side by side: did a verdict change?

``tood-ablate compare --recipe LABEL URI [LAUNCH] --recipe LABEL URI [LAUNCH] [--out reports_out]``
reads every study of each recipe's MLflow store (the study's latest launch, or the launch
named LAUNCH, which lets two recipes share one store), computes each claim as the report does
(reports.claims: paired over the seeds both rows finished, 95% Student-t interval) and writes
``<out>/compare_claims.{md,tex,html}``: one line per claim, the paper's difference, and per
recipe ours with its interval, n and the verdict; the last column says whether the verdicts
differ. E.g. the proxy's 16-epoch schedule against ``proxy_long``::

    tood-ablate compare --recipe "16 epochs" sqlite:///results/archive/proxy/mlruns.db \\
        --recipe "32 epochs" sqlite:///runs/mlruns_long.db
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from reports.cells import NO_VALUE, metric_label
from reports.claims import NOTES, Comparison, compare, fmt_interval, fmt_n, fmt_ours, fmt_paper
from reports.collect import EXPERIMENT_PREFIX, NoRunsError, collect_study, experiment_name, list_studies, open_client
from reports.stats import AGREES, DISAGREES, INCONCLUSIVE, NONE, VERDICTS
from reports.tables import Table, summarize


@dataclass(frozen=True)
class Recipe:
    """A label, the MLflow store holding its launches and optionally the launch to read."""

    label: str
    tracking_uri: str
    launch: str | None = None


def parent_of_launch(client: MlflowClient, study: str, launch: str) -> str | None:
    """Run id of the latest parent run named ``launch`` in the study's experiment, or None."""
    experiment = client.get_experiment_by_name(experiment_name(study))
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id],
                              f"tags.`tood.role` = 'parent' and attributes.run_name = '{launch}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def recipe_claims(recipe: Recipe) -> tuple[dict[tuple[str, str], Comparison], list[str]]:
    """(study, claim) -> the claim's comparison under ``recipe``, and one line per study it skipped."""
    client = open_client(recipe.tracking_uri)
    claims, skipped = {}, []
    for study in list_studies(client):
        parent = "latest"
        if recipe.launch is not None:
            parent = parent_of_launch(client, study, recipe.launch)
            if parent is None:
                continue  # the launch did not run this study
        try:
            data = collect_study(client, study, parent)
        except NoRunsError as exc:
            skipped.append(f"{recipe.label}: {study}: skipped: {exc}")
            continue
        for c in compare(data.study, data.table, summarize(data), data.trials, claim=data.claim, design=data.design):
            if c.is_claim:
                claims[(c.study, c.claim)] = c
    return claims, skipped


def comparison_table(recipes: list[Recipe], per_recipe: list[dict[tuple[str, str], Comparison]],
                     skipped: list[str] = ()) -> Table:
    """One line per claim found under any recipe, in the first recipe's order, then the others'."""
    order = list(dict.fromkeys(key for claims in per_recipe for key in claims))
    header = ["Study", "Claim", "Metric", "Δ paper"]
    for r in recipes:
        header += [f"Δ ours ({r.label})", f"95% CI ({r.label})", f"n ({r.label})", f"Verdict ({r.label})"]
    header.append("Verdicts differ")
    body = []
    for key in order:
        found = [claims.get(key) for claims in per_recipe]
        first = next(c for c in found if c is not None)
        cells = [first.study, first.claim, metric_label(first.metric), fmt_paper(first)]
        for c in found:
            cells += ([fmt_ours(c.diff, c.metric), fmt_interval(c.diff, c.metric), fmt_n(c.diff), c.verdict]
                      if c is not None else [NO_VALUE] * 4)
        if any(c is None or c.diff.kind == NONE for c in found):
            cells.append(NO_VALUE)  # a recipe without an interval has no verdict to compare
        else:
            cells.append("yes" if len({c.verdict for c in found}) > 1 else "no")
        body.append(cells)
    tallies = []
    for r, claims in zip(recipes, per_recipe):
        counts = {v: sum(c.verdict == v for c in claims.values()) for v in VERDICTS}
        tallies.append(f"{r.label}: {counts[AGREES]} agree, {counts[DISAGREES]} disagree, {counts[INCONCLUSIVE]} inconclusive"
                       + f" ({r.tracking_uri}{', launch ' + r.launch if r.launch else ', latest launch per study'})")
    changed, judged = sum(row[-1] == "yes" for row in body), sum(row[-1] != NO_VALUE for row in body)
    notes = tallies + [f"{changed} of the {judged} claims with an interval under every recipe change verdict "
                       f"('{NO_VALUE}': a recipe has no such claim or no interval for it)."] + list(skipped) + NOTES
    caption = "The paper's claims under " + " / ".join(r.label for r in recipes)
    return Table("compare_claims", caption, header, body, notes)


def parse_recipe(values: list[str]) -> Recipe:
    if len(values) not in (2, 3):
        raise ValueError(f"--recipe {' '.join(values)}: expected LABEL URI [LAUNCH] (got {len(values)} values)")
    return Recipe(*values)


def main(argv: list[str] | None = None) -> int:
    """``tood-ablate compare --recipe LABEL URI [LAUNCH] ...`` (``argv``: the arguments after ``compare``)."""
    parser = argparse.ArgumentParser(prog="tood-ablate compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", action="append", nargs="+", required=True, metavar="LABEL URI [LAUNCH]",
                        help="a label, its MLflow tracking URI and optionally the launch to read (default: "
                             "every study's latest launch); give two or more")
    parser.add_argument("--out", default="reports_out", help="output folder (default: reports_out)")
    parser.add_argument("--format", default="md,tex,html", help="table files to write (default: md,tex,html)")
    args = parser.parse_args(argv)
    from orchestration.folders import check_writable
    from orchestration.uris import check_tracking_uri
    from reports.render import parse_formats, write_tables
    from tood.config import ConfigError

    try:
        recipes = [parse_recipe(v) for v in args.recipe]
    except ValueError as exc:
        parser.error(str(exc))
    if len(recipes) < 2:
        parser.error("give two or more --recipe LABEL URI [LAUNCH] to compare")
    if len({r.label for r in recipes}) < len(recipes):
        parser.error(f"--recipe: labels must differ (got {[r.label for r in recipes]})")
    formats = parse_formats(parser, args.format)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        check_writable(args.out, "--out")  # before any MLflow query
        for r in recipes:
            if r.tracking_uri.startswith(("http://", "https://")):
                check_tracking_uri(r.tracking_uri, f"--recipe {r.label}")  # a server that answers, within seconds
    except ConfigError as exc:
        print(f"tood-ablate compare: error: {exc}", file=sys.stderr)
        return 2
    per_recipe, skipped = [], []
    for r in recipes:
        try:
            claims, lines = recipe_claims(r)
        except NoRunsError as exc:
            print(f"tood-ablate compare: error: --recipe {r.label}: {exc}", file=sys.stderr)
            return 2
        if not claims:
            where = f"launch {r.launch!r}" if r.launch else f"any study ({EXPERIMENT_PREFIX}*)"
            print(f"tood-ablate compare: error: --recipe {r.label}: no claim to compare in {where} at tracking URI "
                  f"{r.tracking_uri} (expected a store with runs of the paper's studies)", file=sys.stderr)
            return 2
        per_recipe.append(claims)
        skipped += lines
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = write_tables([comparison_table(recipes, per_recipe, skipped)], out, formats)
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
