"""A study's grid rows aggregated over seeds, and the table they fill: ``RowSummary`` (mean, sample
std and count per metric, or why a row has no finished trial) and ``Table`` (header, cells and
notes, before any output format: reports.formats). reports.layouts lays the rows out the way the
paper's tables do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reports.cells import metric_value
from reports.collect import StudyData
from reports.grid_rows import rows_from_trials
from reports.trials import metric_columns

# The status of a row without a finished trial (RowSummary.status); its cells say it.
GAP_WORDS = ("failed", "running", "interrupted", "missing")
# The title of each layout's study: the captions of its tables start with it.
TITLES = {"table1": "Table 1: head structure, parallel head vs T-head", "table2": "Table 2: sample assignment",
          "table3": "Table 3: TOOD against ATSS, anchor-free and anchor-based",
          "table4": "Table 4: alpha and beta of the task-alignment metric",
          "table6": "Table 6: alignment of the two tasks", "topm": "Top-m of TAL"}
# Below this AP a row has not trained long enough for its ordering against another row to mean
# anything: a detector that learned anything lands far above it (the proxy's rows sit at 60-70 AP
# after 16 epochs, COCO's at 37-43), while an untrained head (a 0-epoch or diverged run) scores ~0.
TRAINED_AP = 1.0


@dataclass
class Table:
    """A rendered-agnostic table: ``header`` names the columns, each row is a list of cell strings."""

    key: str
    caption: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    provenance: str = ""  # the data, profile, epochs, seeds and commit the numbers come from

    def cell(self, row_label: str, column: str) -> str:
        """The cell in the row whose first cell is ``row_label``, under header ``column``."""
        row = next((r for r in self.rows if r[0] == row_label), None)
        if row is None:
            raise KeyError(f"table {self.key}: no row {row_label!r} (rows: {[r[0] for r in self.rows]})")
        if column not in self.header:
            raise KeyError(f"table {self.key}: no column {column!r} (columns: {self.header})")
        return row[self.header.index(column)]


@dataclass
class RowSummary:
    """One grid row over its seeds: mean, sample std (ddof=1, NaN when n = 1) and the number of
    finished seeds with a value (``count``) per metric."""

    index: int
    label: str
    factors: dict[str, str]
    paper: dict[str, float]
    n: int
    n_failed: int
    n_running: int
    mean: dict[str, float]
    std: dict[str, float]
    errors: list[str]
    count: dict[str, int] = field(default_factory=dict)
    n_interrupted: int = 0  # KILLED: the launch was stopped before they finished

    @property
    def status(self) -> str:
        """'ok' with a finished trial, else why not: 'running', 'failed', 'interrupted' or 'missing'."""
        if self.n:
            return "ok"
        if self.n_running:
            return "running"
        return "failed" if self.n_failed else "interrupted" if self.n_interrupted else "missing"


def study_title(table: str, study: str = "") -> str:
    """The human title of a study: its layout's (TITLES), else the study name in words."""
    return TITLES.get(table) or (study or table or "generic").replace("_", " ")


def untrained(row: RowSummary) -> bool:
    """A finished row whose mean AP is below TRAINED_AP: it did not train long enough to compare."""
    return row.status == "ok" and metric_value(row.mean, "AP") < TRAINED_AP


def summarize(data: StudyData) -> list[RowSummary]:
    """One RowSummary per grid row in grid order, then rows the trials name but the grid lacks."""
    trials = data.trials
    metrics = metric_columns(trials)
    labels = {r.label for r in data.grid_rows}
    extra = rows_from_trials(trials[~trials["row"].isin(labels)]) if len(trials) else []
    summaries = []
    for row in list(data.grid_rows) + extra:
        own = trials[trials["row"] == row.label]
        done = own[own["status"] == "FINISHED"]
        failed = own[own["status"] == "FAILED"]
        values = done[metrics].astype(float)
        summaries.append(RowSummary(
            index=row.index, label=row.label, factors=row.factors, paper=row.paper, n=len(done),
            n_failed=len(failed), n_running=int(own["status"].isin(["RUNNING", "SCHEDULED"]).sum()),
            mean=values.mean().to_dict(), std=values.std(ddof=1).to_dict(),
            errors=[f"seed {s}: {e or 'no tood.error tag'}" for s, e in zip(failed["seed"], failed["error"])],
            count={m: int(c) for m, c in values.count().items()}, n_interrupted=int((own["status"] == "KILLED").sum())))
    return summaries
