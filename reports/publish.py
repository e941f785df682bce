"""``tood-ablate publish``: turn a tracking store into a results folder, with its provenance.

Writes into ``--out``: the report of every study (md/tex/html tables, plots, ``report.html``),
``per_seed.csv`` (one line per trial, headed by the launches, commits, machines and the
command), ``machines.md`` (which CPU trained which seeds of each row), a consistent single-file
copy of a sqlite store (``mlruns.db``) with the studies' grid.yaml beside it (``mlartifacts/``,
so the copy reports the same on another clone), and, given the launch (``--launch``, ``--storage-path``), its packing (``suite_packing.json``) and the PCC
diagnostics of the grids named by ``--diagnose``. ``--readme FILE``: the folder's headline table
(``summary_headline.md``) replaces the one between the file's headline markers. The folder's entry in the index
(``--index``, default ``<out>/../index.yaml``) is replaced: study -> launch, parent run,
commits, profile, recipe overrides, machines; the command, store and date for the folder.
Nothing here trains.
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from datetime import datetime, timezone
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from orchestration.folders import check_writable
from orchestration.schema import PROFILE_TAG, default_tracking_uri
from reports.collect import (NoRunsError, StudyData, collect_study, grid_yaml_text, list_studies, open_client,
                             published_artifact)
from reports.export import machines_table, write_csv
from reports.formats import to_markdown
from reports.render import render_report
from tood.config import ConfigError

STORE_COPY = "mlruns.db"
HEADLINE_BEGIN = "<!-- headline from {folder}: written by `tood-ablate publish --readme`, do not edit -->"
HEADLINE_END = "<!-- end of headline -->"


def copy_sqlite(src: Path, dst: Path) -> None:
    """sqlite's online backup: consistent even while a WAL-mode store is being written; the copy
    is one self-contained file (rollback journal)."""
    tmp = dst.with_suffix(".tmp")
    source, target = sqlite3.connect(src), sqlite3.connect(tmp)
    try:
        source.backup(target)
        target.execute("PRAGMA journal_mode=DELETE")
    finally:
        target.close()
        source.close()
    tmp.replace(dst)


def study_entry(data: StudyData) -> dict:
    """Provenance of one study as the index records it."""
    hosts = sorted({h for h in data.trials.get("host", []) if h})
    machines = []
    for h in hosts:
        m = json.loads(h)
        machines.append(f"{m['cpu']}, {m['cores']} logical cores, GPU {m['gpu']}")
    return {"launch": data.parent_name, "parent_run": data.parent_id,
            "commits": sorted(set(data.trials["git_commit"]) - {""}) or ["unknown"],
            "profile": data.parent_tags.get(PROFILE_TAG, "unknown"), "trials": int(len(data.trials)),
            "machines": machines or ["not recorded"]}


def headline_markers(readme: Path) -> tuple[list[str], int, int]:
    """``readme``'s lines and the indices of its headline markers; ConfigError (naming the file
    and what was expected) without exactly one of each, in order, or without the file."""
    if not readme.is_file():
        raise ConfigError(f"--readme {readme}: no such file (expected the README to write the headline into)")
    lines = readme.read_text(encoding="utf-8").splitlines(keepends=True)
    begin = [i for i, line in enumerate(lines) if line.startswith("<!-- headline from ")]
    end = [i for i, line in enumerate(lines) if line.strip() == HEADLINE_END]
    if len(begin) != 1 or len(end) != 1 or end[0] < begin[0]:
        raise ConfigError(f"--readme {readme}: expected one line starting '<!-- headline from ' and, after it, one "
                          f"line '{HEADLINE_END}' (found {len(begin)} and {len(end)}); the headline goes between them")
    return lines, begin[0], end[0]


def splice_headline(readme: Path, folder: Path) -> None:
    """Put ``folder``'s summary_headline.md between ``readme``'s headline markers; the begin marker
    then names ``folder``, relative to the readme's folder."""
    lines, begin, end = headline_markers(readme)
    rel = Path(os.path.relpath(folder.resolve(), readme.resolve().parent)).as_posix()
    table = (folder / "summary_headline.md").read_text(encoding="utf-8")
    new = lines[:begin] + [HEADLINE_BEGIN.format(folder=rel) + "\n\n", table, "\n"] + lines[end:]
    readme.write_text("".join(new), encoding="utf-8")


def keep_grids(client: MlflowClient, studies: list[StudyData], copy: MlflowClient) -> None:
    """Each study's grid.yaml as launched, beside the store copy (reports.collect.published_artifact),
    so the copy reports the same claims and rows where the store's artifact location is not."""
    for data in studies:
        text = grid_yaml_text(client, data.parent_id)
        if text is not None:
            path = published_artifact(copy, data.parent_id, "grid.yaml")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)


def update_index(index: Path, folder: Path, entry: dict) -> None:
    """Replace ``folder``'s entry (keyed by its path relative to the index's folder) in ``index``."""
    data = yaml.safe_load(index.read_text()) if index.is_file() else None
    data = data or {}
    folders = data.setdefault("folders", {})
    folders[folder.resolve().relative_to(index.parent.resolve()).as_posix()] = entry
    data["folders"] = dict(sorted(folders.items()))
    index.write_text("# Generated by `tood-ablate publish`: what made each results folder.\n"
                     + yaml.safe_dump(data, sort_keys=False, width=120))


def publish(tracking_uri: str, out: Path, command: str, index: Path, launch: str | None = None,
            storage_path: str | None = None, diagnose: list[str] | None = None, readme: Path | None = None) -> dict:
    """Write the results folder ``out`` from the store at ``tracking_uri``; returns its index entry."""
    client = open_client(tracking_uri)
    names = list_studies(client)
    if not names:
        raise NoRunsError(f"no studies (experiments named tood-ablate/*) at tracking URI {tracking_uri}")
    out.mkdir(parents=True, exist_ok=True)
    studies = []
    for name in names:
        try:
            studies.append(collect_study(client, name))
        except NoRunsError:  # an experiment without runs: the report skips it too
            continue
    render_report(None, tracking_uri, out, log=False)  # the published store stays as the launches left it
    write_csv(studies, out / "per_seed.csv", [f"command: {command}"] if command else [])
    (out / "machines.md").write_text(to_markdown(machines_table(studies)), encoding="utf-8")
    entry = {"command": command or "not given", "published": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
             "store": None, "studies": {d.study: study_entry(d) for d in studies}}
    if tracking_uri.startswith("sqlite:///"):
        src = Path(tracking_uri[len("sqlite:///"):]).resolve()
        if src != (out / STORE_COPY).resolve():
            copy_sqlite(src, out / STORE_COPY)
            keep_grids(client, studies, open_client(f"sqlite:///{(out / STORE_COPY).resolve()}"))
        entry["store"] = STORE_COPY
    if launch:
        from reports.packing import packing

        (out / "suite_packing.json").write_text(json.dumps(packing(launch, storage_path), indent=2))
        entry["launch"] = launch
    for grid in diagnose or []:
        _diagnose(grid, launch, storage_path, out)
    update_index(index, out, entry)
    if readme is not None:
        splice_headline(readme, out)
    return entry


def _diagnose(grid: str, launch: str | None, storage_path: str | None, out: Path) -> None:
    """PCC diagnostics of ``grid``'s checkpoints, found with the launch's profile, seeds and --set."""
    from orchestration.folders import storage_root
    from orchestration.record import load_launch
    from reports.alignment_diagnostics import main as diagnose_main

    if not launch:
        raise ConfigError(f"--diagnose {grid}: needs --launch (the checkpoints are found in the launch's storage)")
    options = load_launch(launch, storage_path)["options"]
    argv = [grid, "--storage", str(storage_root(storage_path)), f"--profile={options['profile']}"]
    if options.get("seeds"):
        argv.append("--seeds=" + ",".join(map(str, options["seeds"])))
    argv += [f"--set={k}={json.dumps(v)}" for k, v in (options.get("overrides") or {}).items()]
    argv += ["--out", str(out / f"alignment_diagnostics_{Path(grid).stem}")]
    if diagnose_main(argv) != 0:
        raise ConfigError(f"--diagnose {grid}: the diagnostics failed (see above)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tood-ablate publish", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tracking-uri", default=None, help="the store to publish (default: $MLFLOW_TRACKING_URI or ./mlruns.db)")
    p.add_argument("--out", required=True, help="results folder to write, e.g. results/archive/proxy")
    p.add_argument("--command", default="", help="the command that ran the launch(es), recorded in the index and the CSV")
    p.add_argument("--index", default=None, help="index file to update (default: <out>/../index.yaml)")
    p.add_argument("--launch", help="launch name: adds its packing and lets --diagnose find its checkpoints")
    p.add_argument("--storage-path", help="Ray storage of --launch (default: <cwd>/runs/ray)")
    p.add_argument("--diagnose", action="append", default=[], metavar="GRID",
                   help="grid file whose checkpoints get PCC diagnostics (repeatable; needs --launch)")
    p.add_argument("--readme", help="file whose headline markers get this folder's headline table, e.g. README.md")
    args = p.parse_args(argv)
    out = Path(args.out)
    index = Path(args.index) if args.index else out.parent / "index.yaml"
    try:
        check_writable(out, "--out")
        if args.readme:
            headline_markers(Path(args.readme))  # before anything is written
        if not out.resolve().is_relative_to(index.parent.resolve()):
            raise ConfigError(f"--index {index}: must be in a folder above --out {out} (the index keys folders by relative path)")
        publish(args.tracking_uri or default_tracking_uri(), out, args.command, index, args.launch, args.storage_path,
                args.diagnose, Path(args.readme) if args.readme else None)
    except (ConfigError, NoRunsError) as exc:
        print(f"tood-ablate publish: error: {exc}", file=sys.stderr)
        return 2
    print(f"published into {out} (index {index})")
    return 0
