"""The tables of one study's report, in reading order, and of the all-studies summary.

A study's report opens on the answer: the paper table (the paper's columns, ours beside the
paper's), then one claims table (each paper claim with its verdict, then the same pairs on the
paper's other columns), all other metrics, the compute. The summary of every study: all claims,
and the compute per study and in total. Every table carries its provenance: the data, profile,
epochs, seeds and commit its numbers come from.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import pandas as pd
from mlflow.tracking import MlflowClient

from orchestration.host import Machine, machine
from reports.claims import Comparison, compare, comparisons_table
from reports.collect import StudyData
from reports.compute import TrialCompute, compute_table, recorded_machine, summary_compute_table, trial_compute
from reports.headline import headline_table
from reports.layouts import all_metrics, build_table
from reports.tables import RowSummary, Table, study_title, summarize
from reports.trials import stale_notes

NOT_RECORDED = "not recorded"


@dataclass(frozen=True)
class Provenance:
    """Where a study's numbers come from. coco: the data is COCO (None: not recorded)."""

    data: str
    coco: bool | None
    profile: str
    epochs: str
    seeds: str
    commits: str

    @property
    def text(self) -> str:
        """'Data: synthetic proxy (data/proxy160; ...); profile proxy; 16 epochs; seeds 0,1,2; commit abc1234.'"""
        epochs = f"{self.epochs} epochs" if self.epochs != NOT_RECORDED else f"epochs {NOT_RECORDED}"
        return (f"Data: {self.data}; profile {self.profile}; {epochs}; seeds {self.seeds}; "
                f"commit {self.commits}.")

    @property
    def label_coco(self) -> bool:
        """Label the paper's numbers as COCO's: our data is known not to be COCO."""
        return self.coco is False


def data_text(params: dict[str, str]) -> tuple[str, bool | None]:
    """('synthetic proxy (data/proxy160: n_train 800, n_val 200, image_size 160)', False),
    ('COCO (data/coco)', True), ('dataset <root>', False) or ('not recorded', None), from the
    trials' common params ``data.root`` and ``data.synthetic[.*]``."""
    root = params.get("data.root")
    synthetic = any(k.startswith("data.synthetic.") or (k == "data.synthetic" and v not in ("None", ""))
                    for k, v in params.items())
    if synthetic:
        knobs = [f"{k.rsplit('.', 1)[1]} {params[k]}" for k in
                 ("data.synthetic.n_train", "data.synthetic.n_val", "data.synthetic.image_size") if k in params]
        where = ": ".join(x for x in (root, ", ".join(knobs)) if x)
        return f"synthetic proxy ({where})" if where else "synthetic proxy", False
    if root is None:
        return NOT_RECORDED, None
    return (f"COCO ({root})", True) if "coco" in root.lower() else (f"dataset {root}", False)


def provenance(data: StudyData) -> Provenance:
    """The data, profile (parent tag tood.profile), epochs (param train.epochs), seeds and commits of a launch."""
    text, coco = data_text(data.common_params)
    trials, tags = data.trials, data.parent_tags
    seeds = tags.get("tood.seeds") or ",".join(str(s) for s in sorted({int(s) for s in trials.get("seed", [])}))
    commits = sorted({str(c) for c in trials.get("git_commit", []) if c})
    return Provenance(text, coco, tags.get("tood.profile") or NOT_RECORDED,
                      data.common_params.get("train.epochs", NOT_RECORDED), seeds or NOT_RECORDED,
                      ", ".join(commits) or NOT_RECORDED)


def merged(provenances: list[Provenance]) -> Provenance:
    """One Provenance over several studies: each field's distinct values, joined."""
    def join(values: list[str]) -> str:
        return " / ".join(dict.fromkeys(values))

    cocos = {p.coco for p in provenances}
    coco = False if False in cocos else True if cocos == {True} else None  # one non-COCO study: label the paper's
    return Provenance(join([p.data for p in provenances]), coco,
                      join([p.profile for p in provenances]), join([p.epochs for p in provenances]),
                      join([p.seeds for p in provenances]), join([p.commits for p in provenances]))


def rerun_command(data: StudyData) -> str:
    """The command that trains this study on at least three seeds (finished trials are reused):
    the grid file of the parent's tood.grid_file tag (else the study name), its profile, and the
    launch's seeds topped up to three."""
    grid = data.parent_tags.get("tood.grid_file") or data.study
    if "/experiments/" in grid:  # an absolute path where it ran: the repository-relative one
        grid = "experiments/" + grid.rsplit("/experiments/", 1)[1]
    tagged = data.parent_tags.get("tood.seeds", "")
    seeds = {int(s) for s in tagged.split(",") if s.strip().lstrip("-").isdigit()}
    seeds |= {int(s) for s in data.trials.get("seed", []) if int(s) >= 0}
    extra = (s for s in itertools.count() if s not in seeds)
    while len(seeds) < 3:
        seeds.add(next(extra))
    profile = data.parent_tags.get("tood.profile")
    return (f"tood-ablate run {grid}" + (f" --profile {profile}" if profile else "")
            + f" --seeds {','.join(map(str, sorted(seeds)))}")


@dataclass
class StudyReport:
    """What a study's report shows; ``tables`` in reading order, ``main`` the paper table."""

    data: StudyData
    rows: list[RowSummary]
    comparisons: list[Comparison]
    compute: list[TrialCompute]
    main: Table
    tables: list[Table]
    provenance: Provenance


def build_study_report(client: MlflowClient, data: StudyData, host: Machine | None = None) -> StudyReport:
    """Summarise ``data`` and build its tables (``host``: the machine note; default: this one)."""
    prov = provenance(data)
    rows = summarize(data)
    main = build_table(data.table, rows, data.study, data.parent_name, prov.label_coco)
    comparisons = compare(data.study, data.table, rows, data.trials, rerun_command(data), data.claim, data.design)
    records = trial_compute(client, data.trials)
    key, title = main.key, study_title(data.table, data.study)
    tables = [
        main,
        comparisons_table(f"{key}_claims", f"{title}: the paper's claims, our verdicts", comparisons,
                          table=data.table, coco=prov.label_coco),
        all_metrics(rows, data.table, data.study),
        compute_table(f"{key}_compute", f"{title}: compute", rows, records,
                      host or recorded_machine(data.trials) or machine()),
    ]
    if data.claim.shape != "direction":  # the grid's reason for its bound, beside the verdicts it decides
        tables[1].notes.insert(1, f"The claims are {data.claim.shape} claims with δ = {data.claim.delta:g} (the grid's "
                                  f"claim:): {data.claim.why}")
    main.notes += stale_notes(data.trials)
    for table in tables:
        table.provenance = prov.text
    return StudyReport(data, rows, comparisons, records, main, tables, prov)


def summary_tables(reports: list[StudyReport], host: Machine | None = None) -> list[Table]:
    """The all-studies claims table, compute table and headline (reports.headline)."""
    claims = [c for r in reports for c in r.comparisons]
    prov = merged([r.provenance for r in reports])
    tables = [comparisons_table("summary_claims", "All studies: the paper's claims, our verdicts", claims,
                                with_study=True, claims_only=True, coco=prov.label_coco),
              summary_compute_table({r.data.study: r.compute for r in reports},
                                    host or _same_machine([recorded_machine(r.data.trials) for r in reports])
                                    or machine()),
              headline_table(claims)]
    for table in tables:
        table.provenance = prov.text
    return tables


def _same_machine(machines: list[Machine | None]) -> Machine | None:
    return machines[0] if machines and all(m is not None and m == machines[0] for m in machines) else None


def rows_frame(rows: list[RowSummary]) -> pd.DataFrame:
    """The aggregated rows, one per grid row: label, index, status, n, n_failed, n_running, n_interrupted,
    ``factor.<name>``, and per metric ``<metric>.mean``, ``<metric>.std``, ``<metric>.n``,
    ``<metric>.paper`` (empty where absent)."""
    records = []
    for r in rows:
        record: dict[str, object] = {"row": r.label, "row_index": r.index, "status": r.status, "n": r.n,
                                     "n_failed": r.n_failed, "n_running": r.n_running, "n_interrupted": r.n_interrupted}
        record.update({f"factor.{k}": v for k, v in r.factors.items()})
        for metric in sorted(set(r.mean) | set(r.paper)):
            mean, std = r.mean.get(metric, math.nan), r.std.get(metric, math.nan)
            record.update({f"{metric}.mean": mean, f"{metric}.std": std, f"{metric}.n": r.count.get(metric, 0),
                           f"{metric}.paper": r.paper.get(metric, math.nan)})
        records.append(record)
    return pd.DataFrame(records)
