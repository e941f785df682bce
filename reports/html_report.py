"""The HTML of a report: one self-contained page (CSS inline, plots as data URIs) and a study's
section in it, which opens on the answer (the paper table and the claims) before the launch's
details, the other tables and the plots of the study's layout.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from orchestration.mlflow_ui import run_url, view_url
from reports import plots
from reports.collect import StudyData
from reports.document import StudyReport
from reports.formats import to_html
from reports.tables import RowSummary, study_title

FIGURE_CAPTIONS = {
    "alpha_beta_heatmap": "AP (mean over seeds) for each (α, β) of the alignment metric t = s^α · u^β.",
    "ap_vs_topm": "AP against TAL's top-m: ours as mean ± sample std over seeds, the paper's as squares.",
    "pcc_vs_ap": "PCC of the top-50 scores with their IoUs against AP, per row: ours (left), the paper's (right).",
    "training_curves": "Per-epoch total loss and validation AP, mean over finished seeds (band: ± sample std).",
}
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1400px;
padding:0 1.5em;color:#1d2433;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #d0d7e2;padding-bottom:.2em;margin-top:2em}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1.2em;background:#f4f6fa;
padding:.8em 1.2em;border-radius:6px}dl.meta dt{font-weight:600}dl.meta dd{margin:0}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.8em;margin:.6em 0}
caption{caption-side:top;text-align:left;font-weight:600;font-size:1.08em;padding:.4em 0}
th,td{padding:.3em .45em;border-bottom:1px solid #e1e5ee;white-space:nowrap;text-align:right}
thead th{background:#2f3b52;color:#fff;font-weight:600;text-align:center;white-space:normal;min-width:3.5em}
tbody th{text-align:left;font-weight:600}tbody tr:nth-child(even){background:#f7f9fc}
td.gap{color:#b42318;font-style:italic;background:#fdecea}td.disagree{background:#fff4d6}
td.agrees{background:#e3f4e8}td.disagrees{background:#fdecea;font-weight:600}td.inconclusive{color:#6b7280}
td.no-verdict{color:#6b7280;font-style:italic;text-align:left}
caption .provenance{display:block;font-weight:400;font-size:.85em;color:#4a5568;padding-top:.15em}
h3{font-size:1.05em;margin:1.4em 0 .4em}
figure.tood-table{margin:1em 0}ul.notes{font-size:.82em;color:#4a5568;margin-top:.2em}
figure.plot{margin:1.2em 0}figure.plot img{max-width:100%;border:1px solid #e1e5ee}
figure.plot figcaption{font-size:.85em;color:#4a5568}.skipped{color:#b42318}
"""


def html_page(title: str, body: str) -> str:
    """A complete HTML document with the report's CSS inline (no external resources)."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def study_figures(data: StudyData, rows: list[RowSummary], histories: pd.DataFrame) -> dict[str, Figure]:
    """name (a key of FIGURE_CAPTIONS) -> Figure, for the plots this study's layout has."""
    figures = {}
    if data.table == "table4":
        figures["alpha_beta_heatmap"] = plots.alpha_beta_heatmap(rows)
    if data.table == "topm":
        figures["ap_vs_topm"] = plots.topm_plot(rows)
    if data.table == "table6":
        figures["pcc_vs_ap"] = plots.pcc_scatter(rows)
    if len(histories):
        figures["training_curves"] = plots.training_curves(histories)
    return figures


def _meta(report: StudyReport, generated: str) -> list[tuple[str, str]]:
    """(label, HTML) pairs of the launch: data, seeds, trial counts, time, MLflow ids."""
    data = report.data
    tags, trials = data.parent_tags, data.trials
    counts = trials["status"].value_counts() if len(trials) else {}
    seeds = sorted({int(s) for s in trials["seed"]}) if len(trials) else []
    finished = int(counts.get("FINISHED", 0))
    failed, interrupted = int(counts.get("FAILED", 0)), int(counts.get("KILLED", 0))
    running = int(counts.get("RUNNING", 0)) + int(counts.get("SCHEDULED", 0))
    run_link = html.escape(data.parent_id)
    if data.tracking_uri.startswith(("http://", "https://")):
        parent = html.escape(run_url(data.tracking_uri, data.experiment_id, data.parent_id))
        view = html.escape(view_url(data.tracking_uri, data.experiment_id))
        run_link = (f'<a href="{parent}">{run_link}</a> '
                    f'(<a href="{view}">runs with AP, AP50, AP75, PCC</a>)')
    else:  # no server to link: the address to append to `mlflow ui`'s
        run_link += f"; in the UI: <code>{html.escape(view_url('', data.experiment_id))}</code>"
    commits = sorted({c for c in trials.get("git_commit", []) if c})
    commit_text = f", commit {', '.join(commits)}" if commits else ""
    e = html.escape
    return [
        ("Study", e(f"{data.study} (layout {data.table})")),
        ("Provenance", e(report.provenance.text)),
        ("Seeds", e(f"{tags.get('tood.seeds', ','.join(map(str, seeds)))} ({len(seeds)} in the trials)")),
        ("Trials", e(f"{finished} finished, {failed} failed, {running} running"
                     + (f", {interrupted} interrupted" if interrupted else "") + ", of "
                     f"{tags.get('tood.num_trials', len(trials))} planned; {len(data.grid_rows)} grid rows "
                     f"(from the {data.grid_source})")),
        ("Generated", e(generated)),
        ("MLflow", f"tracking URI <code>{e(data.tracking_uri)}</code>, experiment "
                   f"<code>{e(data.experiment_name)}</code> (id {e(data.experiment_id)}), parent run "
                   f"<code>{e(data.parent_name or '')}</code> ({run_link}){e(commit_text)}"),
    ]


def study_section(report: StudyReport, pngs: dict[str, Path], generated: str) -> str:
    """The study's HTML: its title, the paper table and the claims (the answer), then the launch
    (data, trials, MLflow ids), the other tables and the plots."""
    data, tables = report.data, report.tables
    meta = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in _meta(report, generated))
    images = "".join(
        f'<figure class="plot"><img alt="{name}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode("ascii")}">'
        f"<figcaption>{html.escape(FIGURE_CAPTIONS[name])}</figcaption></figure>"
        for name, path in pngs.items())
    title = html.escape(study_title(data.table, data.study))
    return (f'<section id="study-{html.escape(data.study)}">\n<h2>{title}</h2>\n'
            f'{"".join(to_html(t) for t in tables[:2])}<h3>The launch</h3>\n<dl class="meta">{meta}</dl>\n'
            f'{"".join(to_html(t) for t in tables[2:])}{images}\n</section>\n')
