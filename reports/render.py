"""`tood-ablate report`: a study's tables (md/tex/html; reports.document says which), a CSV of
its aggregated rows, plots (PNG) and one self-contained HTML report, also logged under
``report/`` as artifacts of the study's parent run. Rendering a study's latest launch also
refreshes its summary run (reports.summary_run: the answer on one row of the MLflow UI), whose
UI address is printed on stderr. With --all, one report of every study that opens with the
claims and compute of all of them.

    tood-ablate report table6_alignment --out reports_out
    tood-ablate report --all --tracking-uri sqlite:////abs/path/mlruns.db
"""

from __future__ import annotations

import argparse
import html
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestration.schema import default_tracking_uri
from reports import plots
from reports.collect import (
    NoRunsError,
    StudyData,
    collect_study,
    find_parent,
    list_studies,
    metric_histories,
    open_client,
)
from reports.document import StudyReport, build_study_report, rows_frame, summary_tables
from reports.formats import to_html, to_latex, to_markdown
from reports.html_report import html_page, study_figures, study_section
from reports.summary_run import refresh_summary, summary_lines
from reports.tables import Table, study_title

FORMATS = {"md": to_markdown, "tex": to_latex, "html": to_html}


@dataclass
class ReportPaths:
    """What render_report wrote: ``html`` is the report to open (all studies in one with --all);
    ``logged_to``: the parent runs that got it; ``summaries``: the summary runs refreshed;
    ``ui``: where to look in the MLflow UI (summary_run.summary_lines)."""

    html: Path
    tables: list[Path] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    logged_to: list[str] = field(default_factory=list)
    summaries: list[str] = field(default_factory=list)
    ui: list[str] = field(default_factory=list)


def write_tables(tables: list[Table], folder: Path, formats: tuple[str, ...]) -> list[Path]:
    """``folder/<table.key>.<fmt>`` for every table and format (html: a complete page)."""
    paths = []
    for table in tables:
        for fmt in formats:
            path = folder / f"{table.key}.{fmt}"
            text = FORMATS[fmt](table)
            path.write_text(html_page(table.caption, text) if fmt == "html" else text, encoding="utf-8")
            paths.append(path)
    return paths


def render_study(client: MlflowClient, data: StudyData, out_dir: Path, formats: tuple[str, ...],
                 generated: str, log: bool = True) -> tuple[StudyReport, str, ReportPaths]:
    """Write ``out_dir/<study>/``: table files, rows.csv, PNGs and report.html; log them to the
    parent run (unless ``log`` is False: the store stays as it is). Returns the study's report,
    its HTML section (for a combined report) and what was written.
    """
    study_dir = out_dir / data.study
    study_dir.mkdir(parents=True, exist_ok=True)
    report = build_study_report(client, data)
    paths = ReportPaths(html=study_dir / "report.html")
    paths.tables += write_tables(report.tables, study_dir, formats)
    rows_frame(report.rows).to_csv(study_dir / "rows.csv", index=False)
    paths.tables.append(study_dir / "rows.csv")
    histories = metric_histories(client, data.trials[data.trials["status"] == "FINISHED"])
    pngs = {name: plots.save_figure(fig, study_dir / f"{name}.png")
            for name, fig in study_figures(data, report.rows, histories).items()}
    paths.plots.extend(pngs.values())
    section = study_section(report, pngs, generated)
    title = study_title(data.table, data.study)
    paths.html.write_text(html_page(f"TOOD ablation report: {title}",
                                    f"<h1>TOOD ablation report: {html.escape(title)}</h1>\n{section}"),
                          encoding="utf-8")
    if log:
        log_report(client, report, study_dir, paths)
    return report, section, paths


def log_report(client: MlflowClient, report: StudyReport, study_dir: Path, paths: ReportPaths) -> None:
    """Log ``study_dir`` under the parent run's ``report/``; for the study's latest launch, also
    refresh its summary run (an older launch's report leaves the summary alone). A store that
    refuses is a warning: the files on disk are the report."""
    data = report.data
    try:
        client.log_artifacts(data.parent_id, str(study_dir), artifact_path="report")
        paths.logged_to.append(data.parent_id)
        if find_parent(client, data.study).info.run_id == data.parent_id:
            paths.summaries.append(refresh_summary(client, report, [paths.html, study_dir / "rows.csv", *paths.plots]))
            paths.ui += summary_lines(data.tracking_uri, data.experiment_id, data.study, paths.summaries[-1])
    except (MlflowException, OSError) as exc:
        print(f"tood-ablate report: warning: could not log {study_dir} to MLflow ({data.parent_id}): {exc}",
              file=sys.stderr)


def render_report(study: str | None, tracking_uri: str | None = None, out_dir: str | Path = "reports_out",
                  formats: tuple[str, ...] = ("md", "tex", "html"), parent: str = "latest", log: bool = True) -> ReportPaths:
    """Render one study (or every study when ``study`` and ``parent`` are None/'latest').

    ``parent``: a parent run id or 'latest'; ``log``: also log each study's report to its parent
    run and refresh its summary run. Raises NoRunsError when there is nothing to report.
    """
    unknown = set(formats) - FORMATS.keys()
    if unknown:
        raise ValueError(f"render_report: formats: unknown {sorted(unknown)} "
                         f"(expected some of {sorted(FORMATS)})")
    client = open_client(tracking_uri or default_tracking_uri())
    out_dir = Path(out_dir)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    if study is not None or parent != "latest":
        return render_study(client, collect_study(client, study, parent), out_dir, formats, generated, log)[2]
    names = list_studies(client)
    if not names:
        raise NoRunsError(f"no studies (experiments named tood-ablate/*) at tracking URI {client.tracking_uri}")
    combined, sections, skipped, reports = ReportPaths(html=out_dir / "report.html"), [], [], []
    for name in names:
        try:
            data = collect_study(client, name, "latest")
        except NoRunsError as exc:
            skipped.append(f'<p class="skipped">{html.escape(name)}: skipped: {html.escape(str(exc))}</p>')
            continue
        report, section, paths = render_study(client, data, out_dir, formats, generated, log)
        reports.append(report)
        sections.append(section)
        combined.tables += paths.tables
        combined.plots += paths.plots
        combined.logged_to += paths.logged_to
        combined.summaries += paths.summaries
        combined.ui += paths.ui
    if not sections:
        raise NoRunsError(f"no study at tracking URI {client.tracking_uri} has runs to report")
    summary = summary_tables(reports)
    combined.tables += write_tables(summary, out_dir, formats)
    combined.html.write_text(html_page("TOOD ablation report", "<h1>TOOD ablation report: all studies</h1>\n"
                                       + '<section id="summary">' + "".join(to_html(t) for t in summary)
                                       + "</section>\n" + "".join(skipped + sections)), encoding="utf-8")
    return combined


def render_launch(name: str, storage_path: str | Path, tracking_uri: str) -> list[str]:
    """After `tood-ablate run`/`resume` of launch ``name`` (its record under ``storage_path``):
    each of its studies rendered into ``<storage_path>/<name>/report`` (``render_parents``)."""
    from orchestration.record import load_launch

    info = load_launch(name, str(storage_path))
    parents = [(s["study"], s["parent_run_id"]) for s in info.get("studies") or [info]]  # older records: one study
    return render_parents(parents, tracking_uri, Path(info["path"]) / "report")


def render_parents(parents: list[tuple[str, str]], tracking_uri: str, out: Path) -> list[str]:
    """Each (study, parent run) rendered into ``out``, logged to its parent run, its summary run
    refreshed. Returns the UI lines to print; a study whose report fails is a warning naming the
    command that renders it (the launch's result stands)."""
    lines = []
    for study, parent in parents:
        try:
            lines += render_report(study, tracking_uri, out, parent=parent).ui
        except Exception as exc:  # noqa: BLE001 -- the trained runs are safe in MLflow; say how to retry
            print(f"tood-ablate: warning: report of {study} failed ({type(exc).__name__}: {exc}); run: "
                  f"tood-ablate report {study} --parent {parent} --tracking-uri {tracking_uri}", file=sys.stderr)
    return lines


def parse_formats(parser: argparse.ArgumentParser, text: str) -> tuple[str, ...]:
    """``--format md,html`` -> ("md", "html"); anything but a non-empty subset of FORMATS is a usage error."""
    formats = tuple(f.strip() for f in text.split(",") if f.strip())
    if not formats or set(formats) - FORMATS.keys():
        parser.error(f"--format {text!r}: expected a comma-separated subset of {','.join(FORMATS)}")
    return formats


def main(argv: list[str] | None = None) -> int:
    """``tood-ablate report STUDY|--all [...]`` (``argv``: the arguments after ``report``)."""
    parser = argparse.ArgumentParser(prog="tood-ablate report", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", nargs="?", help="study name: experiment tood-ablate/<study>")
    parser.add_argument("--all", action="store_true", help="every study, in one combined report")
    parser.add_argument("--out", default="reports_out", help="output folder (default: reports_out)")
    parser.add_argument("--format", default="md,tex,html", help="table files to write (default: md,tex,html)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///<abs>/mlruns.db)")
    parser.add_argument("--parent", default="latest", help="parent run id of the launch, or 'latest' (default)")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep stdout to the path,
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # also against a server
    if args.all and (args.study is not None or args.parent != "latest"):
        parser.error("--all reports every study's latest launch: give no STUDY and no --parent with it")
    if not args.all and args.study is None and args.parent == "latest":
        parser.error("give a STUDY, --all, or --parent RUN_ID")
    formats = parse_formats(parser, args.format)
    from orchestration.folders import check_writable
    from tood.config import ConfigError

    try:
        check_writable(args.out, "--out")  # before any MLflow query
    except ConfigError as exc:
        print(f"tood-ablate report: error: {exc}", file=sys.stderr)
        return 2
    try:
        paths = render_report(None if args.all else args.study, args.tracking_uri, args.out, formats, args.parent)
    except NoRunsError as exc:
        print(f"tood-ablate report: error: {exc}", file=sys.stderr)
        return 2
    print(paths.html)
    if paths.ui:  # stdout stays the path alone; where to look in the UI goes to stderr
        print("tood-ablate report: the study's answer in the MLflow UI:\n" + "\n".join(paths.ui), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
