"""The layouts of a study's paper-style tables: our numbers, seeds aggregated, beside the paper's.

Each layout shows the paper's columns only (AP / AP50 / AP75; Table 6: AP, PCC, top-10 IoU and
the three detection counts), compares rows the way the paper does (the pairs of
reports.pairs) and marks with DISAGREE an ordering of a compared pair that differs from the
paper's, unless a row of the pair did not train (AP < TRAINED_AP). Where the data is not COCO the
paper's columns say so ("AP (paper, COCO)"). Every other metric goes to ``all_metrics``, less the
columns that are constant over its rows (named in a note). A grid row without a finished trial
keeps its place, its cells saying "failed" / "running" / "interrupted" / "missing".
"""

from __future__ import annotations

import math

from reports.cells import (
    NO_VALUE,
    fmt_constant,
    fmt_delta,
    fmt_value,
    head_kind,
    metric_label,
    metric_value,
    paper_header,
    strip_head,
    top_m,
)
from reports.pairs import REFERENCE_NAMES, delta_note, detector_name, reference
from reports.tables import TITLES, TRAINED_AP, RowSummary, Table, study_title, untrained
from reports.trials import FINAL_METRICS

DISAGREE = "†"
AP_METRICS = ("AP", "AP50", "AP75")
TABLE6_METRICS = ("AP", "PCC", "top10_iou", "n_correct", "n_redundant", "n_error")
PAPER_COLUMNS = {"table1": AP_METRICS, "table2": AP_METRICS, "table3": AP_METRICS, "topm": ("AP",),
                 "table4": AP_METRICS, "table6": TABLE6_METRICS}
# Neither a paper column nor a result: the epoch counter, the resume marker, the compute table's.
NOT_REPORTED = ("epoch", "already_finished", "attempt_wall_s")


def fmt_mean_std(row: RowSummary | None, metric: str) -> str:
    """'40.3 ± 0.2 (3)' (n: seeds with a value); '40.3' for one seed; the gap word for a row
    without a finished trial."""
    if row is None:
        return NO_VALUE
    if row.status != "ok":
        return row.status
    mean, std = metric_value(row.mean, metric), metric_value(row.std, metric)
    if math.isnan(mean):
        return NO_VALUE
    n = row.count.get(metric, row.n)
    if n <= 1 or math.isnan(std):
        return fmt_value(mean, metric)
    return f"{fmt_value(mean, metric)} ± {fmt_value(std, metric)} ({n})"


def disagrees(row: RowSummary, ref: RowSummary, metric: str) -> bool:
    """Our row-minus-ref difference has another sign than the paper's (paper difference != 0)."""
    if row is ref or row.status != "ok" or ref.status != "ok" or untrained(row) or untrained(ref):
        return False
    ours = metric_value(row.mean, metric) - metric_value(ref.mean, metric)
    paper = metric_value(row.paper, metric) - metric_value(ref.paper, metric)
    if math.isnan(ours) or math.isnan(paper) or paper == 0:
        return False
    return (ours > 0) != (paper > 0) or ours == 0


def _metric_cells(row: RowSummary | None, metric: str, ref: RowSummary | None) -> list[str]:
    """[ours (with DISAGREE when the ordering against ``ref`` differs), paper]."""
    if row is None:
        return [NO_VALUE, NO_VALUE]
    ours = fmt_mean_std(row, metric)
    if ref is not None and disagrees(row, ref, metric):
        ours += " " + DISAGREE
    return [ours, fmt_value(metric_value(row.paper, metric), metric)]


def _delta_cells(row: RowSummary | None, ref: RowSummary | None, metric: str) -> list[str]:
    """[ours, paper] of row minus ref; 'ref' on the reference row itself."""
    if row is None or ref is None:
        return [NO_VALUE, NO_VALUE]
    if row is ref:
        return ["ref", "ref"]
    if row.status != "ok":
        ours = row.status
    else:
        ours = fmt_delta(metric_value(row.mean, metric) - metric_value(ref.mean, metric), metric)
    return [ours, fmt_delta(metric_value(row.paper, metric) - metric_value(ref.paper, metric), metric)]


def _n_cell(row: RowSummary | None) -> str:
    if row is None:
        return NO_VALUE
    extra = [f"{k} {w}" for k, w in ((row.n_failed, "failed"), (row.n_running, "running"),
                                     (row.n_interrupted, "interrupted")) if k]
    return f"{row.n} ({', '.join(extra)})" if extra else str(row.n)


def _notes(rows: list[RowSummary], table_rows: list[list[str]], ref_text: str | None, launch: str | None = None,
           coco: bool = False) -> list[str]:
    paper = ("(paper, COCO): the paper's number, on COCO (our data is not COCO: compare orderings, not values)"
             if coco else "(paper): the paper's number")
    notes = [f"Ours: mean ± sample std (ddof=1) (n finished seeds with a value); a single value when "
             f"n = 1; {paper}; '-': no value."]
    if any(DISAGREE in cell for r in table_rows for cell in r):
        notes.append(f"{DISAGREE}: our ordering against {ref_text} disagrees with the paper's "
                     "(the two differences have different signs).")
    for row in rows:
        if row.status == "interrupted":
            notes.append(f"{row.label}: interrupted (no finished trial; the launch was stopped before it "
                         f"finished: `tood-ablate resume {launch or '<launch>'}` trains the rest).")
        elif row.status != "ok":
            notes.append(f"{row.label}: {row.status} (no finished trial).")
        elif untrained(row):
            notes.append(f"{row.label}: AP {fmt_value(metric_value(row.mean, 'AP'), 'AP')} is below {TRAINED_AP:g}: "
                         f"did not train long enough to compare (no {DISAGREE}, no verdict).")
        notes.extend(f"{row.label}, {e}" for e in row.errors)
    return notes


def compare_table(table: str, caption: str, first: str, rows: list[RowSummary], metrics: tuple[str, ...],
                  ref: RowSummary | None, ref_name: str, launch: str | None = None, coco: bool = False) -> Table:
    """One line per row: n, ours and paper per metric, then AP minus the reference row's."""
    header = [first, "n"] + [h for m in metrics for h in (metric_label(m), paper_header(metric_label(m), coco))]
    if ref is not None:
        header += ["ΔAP", paper_header("ΔAP", coco)]
    body = []
    for row in rows:
        cells = [row.label, _n_cell(row)] + [c for m in metrics for c in _metric_cells(row, m, ref)]
        body.append(cells + (_delta_cells(row, ref, "AP") if ref is not None else []))
    notes = _notes(rows, body, ref_name, launch, coco)
    if ref is not None:
        notes.insert(1, delta_note(table))
    if ref is None and ref_name:
        notes.append(f"No differences: the grid has no row {ref_name}.")
    return Table(table, caption, header, body, notes)


def table1(rows: list[RowSummary], launch: str | None = None, coco: bool = False) -> Table:
    """Detectors as rows, {parallel, T-head} x {AP, AP50, AP75} as columns, T-head minus parallel."""
    detectors: dict[str, dict[str, RowSummary]] = {}
    for row in rows:
        detectors.setdefault(detector_name(row), {})[head_kind(row)] = row
    header = ["Detector", "n (parallel)", "n (T-head)"]
    for head in ("parallel", "T-head"):
        header += [h for m in AP_METRICS for h in (f"{head} {m}", paper_header(f"{head} {m}", coco))]
    header += ["ΔAP", paper_header("ΔAP", coco)]
    body = []
    for heads in detectors.values():
        par, th = heads.get("parallel"), heads.get("T-head")
        cells = [strip_head(next(iter(heads.values())).label), _n_cell(par), _n_cell(th)]
        cells += [c for m in AP_METRICS for c in _metric_cells(par, m, None)]
        cells += [c for m in AP_METRICS for c in _metric_cells(th, m, par)]
        body.append(cells + _delta_cells(th, par, "AP"))
    notes = _notes(rows, body, "the parallel head of the same detector", launch, coco)
    notes.insert(1, delta_note("table1"))
    return Table("table1", f"{TITLES['table1']} (AP / AP50 / AP75)", header, body, notes)


def topm(rows: list[RowSummary], launch: str | None = None, coco: bool = False) -> Table:
    """Top-m of TAL: one column per m (ascending), AP ours/paper and minus m = 13."""
    rows = sorted(rows, key=lambda r: (math.isnan(top_m(r)), top_m(r)))
    ref = reference("topm", rows)
    names = [r.label if math.isnan(top_m(r)) else f"m={top_m(r):g}" for r in rows]
    metric_rows = [_metric_cells(r, "AP", ref) for r in rows]
    delta_rows = [_delta_cells(r, ref, "AP") for r in rows]
    body = [["n"] + [_n_cell(r) for r in rows],
            ["AP"] + [c[0] for c in metric_rows],
            [paper_header("AP", coco)] + [c[1] for c in metric_rows],
            ["ΔAP"] + [d[0] for d in delta_rows],
            [paper_header("ΔAP", coco)] + [d[1] for d in delta_rows]]
    notes = _notes(rows, body, "m=13", launch, coco)
    notes.insert(1, delta_note("topm"))
    if ref is None:
        notes.append("No differences: the grid has no row with m = 13.")
    return Table("topm", f"{TITLES['topm']} (AP); the paper reports 42.0-42.5 for every m and picks m = 13",
                 ["top-m"] + names, body, notes)


def main_metrics(table: str, rows: list[RowSummary]) -> tuple[str, ...]:
    """The paper's columns of layout ``table``; for another layout (smoke) AP / AP50 / AP75 and
    every metric a row has a paper number for."""
    if table in PAPER_COLUMNS:
        return PAPER_COLUMNS[table]
    with_paper = {m for r in rows for m in r.paper}
    return tuple(m for m in FINAL_METRICS if m in AP_METRICS or m in with_paper)


def build_table(table: str, rows: list[RowSummary], study: str = "", launch: str | None = None,
                coco: bool = False) -> Table:
    """The layout named by the parent's tood.table tag; unknown names get the generic layout.
    ``launch``: the launch's name, for the note on how to finish interrupted rows; ``coco``: label
    the paper's columns as COCO numbers (our data is not COCO)."""
    if table == "table1":
        return table1(rows, launch, coco)
    if table == "topm":
        return topm(rows, launch, coco)
    first = {"table2": "Assignment", "table3": "Method", "table4": "(α, β)", "table6": "Method"}
    if table in first:
        caption = TITLES[table] + (" (AP / AP50 / AP75)" if table in ("table2", "table3") else "")
        return compare_table(table, caption, first[table], rows, PAPER_COLUMNS[table], reference(table, rows),
                             REFERENCE_NAMES.get(table, ""), launch, coco)
    return generic(rows, table, study, launch, coco)


def generic(rows: list[RowSummary], table: str, study: str, launch: str | None = None, coco: bool = False) -> Table:
    """Rows by label with the columns of :func:`main_metrics`, ours beside the paper's."""
    metrics = main_metrics(table, rows)
    with_paper = {m for r in rows for m in r.paper}
    header = ["Row", "n"] + [h for m in metrics for h in
                             ((metric_label(m), paper_header(metric_label(m), coco))
                              if m in with_paper else (metric_label(m),))]
    body = [[r.label, _n_cell(r)] + [c for m in metrics
                                     for c in _metric_cells(r, m, None)[: 2 if m in with_paper else 1]]
            for r in rows]
    return Table(table or "generic", f"{study_title(table, study)}: {', '.join(metrics)}", header, body,
                 _notes(rows, body, None, launch, coco))


def all_metrics(rows: list[RowSummary], table: str, study: str) -> Table:
    """Every metric that is not a column of the paper table (losses and lr at their last epoch,
    times, instance counts, PCC_spearman, PCC_image, pcc_n_mean, APs/m/l, ...), one row per grid
    row; the compute table has the attempts' wall time."""
    shown = set(main_metrics(table, rows)) | set(NOT_REPORTED)
    present = {m for r in rows for m, v in r.mean.items() if not math.isnan(v)} - shown
    metrics = [m for m in FINAL_METRICS if m in present] + sorted(present - set(FINAL_METRICS))
    constant = {m: v for m in metrics if (v := _constant(rows, m)) is not None}
    metrics = [m for m in metrics if m not in constant]
    header = ["Row", "n"] + [metric_label(m) for m in metrics]
    body = [[r.label, _n_cell(r)] + [fmt_mean_std(r, m) for m in metrics] for r in rows]
    notes = ["Ours: mean ± sample std (ddof=1) (n finished seeds with a value); a single value when n = 1; "
             "'-': no value. Losses, lr and epoch_AP: the value of the last epoch; epoch_time_s: seconds of the "
             "last epoch."]
    if constant:
        notes.append("Not shown, the same in every row and seed: "
                     + ", ".join(f"{metric_label(m)} {fmt_constant(v, m)}" for m, v in constant.items()) + ".")
    return Table(f"{table or 'generic'}_all_metrics", f"{study_title(table, study)}: all other metrics", header,
                 body, notes)


def _constant(rows: list[RowSummary], metric: str) -> float | None:
    """The value of ``metric`` when every finished row (two or more) has it on every seed, up to
    float rounding (std 0), else None."""
    done = [r for r in rows if r.status == "ok"]
    means = [metric_value(r.mean, metric) for r in done]
    if len(done) < 2 or any(math.isnan(v) for v in means):
        return None
    same = all(math.isclose(v, means[0], rel_tol=1e-9, abs_tol=1e-12) for v in means)
    spread = [metric_value(r.std, metric) for r in done]
    return means[0] if same and all(math.isnan(s) or s <= 1e-9 * abs(means[0]) + 1e-12 for s in spread) else None
