"""The tables of one study's report, in reading order, and of the all-studies summary.

A study's report: the claims (one line per paper claim, with its verdict), the paper table
(the paper's columns only), every paired comparison, all other metrics, the compute. The
summary of every study: all claims, and the compute per study and in total.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from mlflow.tracking import MlflowClient

from reports.claims import Comparison, compare, comparisons_table
from reports.collect import StudyData
from orchestration.host import Machine, machine
from reports.compute import TrialCompute, compute_table, recorded_machine, summary_compute_table, trial_compute
from reports.tables import RowSummary, Table, all_metrics, build_table, summarize


@dataclass
class StudyReport:
    """What a study's report shows; ``tables`` in reading order, ``main`` the paper table."""

    data: StudyData
    rows: list[RowSummary]
    comparisons: list[Comparison]
    compute: list[TrialCompute]
    main: Table
    tables: list[Table]


def build_study_report(client: MlflowClient, data: StudyData, host: Machine | None = None) -> StudyReport:
    """Summarise ``data`` and build its tables (``host``: the machine note; default: this one)."""
    rows = summarize(data)
    main = build_table(data.table, rows, data.study, data.parent_name)
    comparisons = compare(data.study, data.table, rows, data.trials)
    records = trial_compute(client, data.trials)
    key, name = main.key, data.study
    tables = [
        comparisons_table(f"{key}_claims", f"{name}: the paper's claims, our verdicts", comparisons,
                          claims_only=True),
        main,
        comparisons_table(f"{key}_comparisons", f"{name}: paired comparisons over seeds", comparisons),
        all_metrics(rows, data.table, name),
        compute_table(f"{key}_compute", f"{name}: compute", rows, records, host or recorded_machine(data.trials) or machine()),
    ]
    if not comparisons:  # a layout the paper has no comparisons for (smoke): the claims table says so
        del tables[2]
    return StudyReport(data, rows, comparisons, records, main, tables)


def summary_tables(reports: list[StudyReport], host: Machine | None = None) -> list[Table]:
    """The all-studies claims table and compute table."""
    claims = [c for r in reports for c in r.comparisons]
    return [comparisons_table("summary_claims", "All studies: the paper's claims, our verdicts", claims,
                              with_study=True, claims_only=True),
            summary_compute_table({r.data.study: r.compute for r in reports},
                                  host or _same_machine([recorded_machine(r.data.trials) for r in reports]) or machine())]


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
