"""``tood-ablate publish`` on the report fixture store: the results folder, its index entry and
a store copy that renders the same tables."""
import sqlite3
import sys
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reports.render import render_report  # noqa: E402
from tests.test_reports import build_store  # noqa: E402
from tood_ablate.cli import main  # noqa: E402


def _runs(db: Path) -> int:
    with sqlite3.connect(db) as con:
        return con.execute("select count(*) from runs").fetchone()[0]


def test_publish_writes_the_folder_its_index_and_a_store_that_renders_the_same(tmp_path):
    store = build_store(tmp_path / "store")
    results = tmp_path / "results"
    (results).mkdir()
    (results / "index.yaml").write_text(yaml.safe_dump({"folders": {"other": {"command": "kept"}}}))
    out = results / "proxy"
    assert main(["publish", "--tracking-uri", store.uri, "--out", str(out), "--command", "tood-ablate run --all"]) == 0

    index = yaml.safe_load((results / "index.yaml").read_text())["folders"]
    assert index["other"] == {"command": "kept"}  # another folder's entry survives
    entry = index["proxy"]
    assert entry["command"] == "tood-ablate run --all" and entry["store"] == "mlruns.db"
    assert sorted(entry["studies"]) == ["smoke", "table2_assignment", "table6_alignment"]  # 'empty' has no runs
    t6 = entry["studies"]["table6_alignment"]
    assert (t6["launch"], t6["parent_run"], t6["profile"], t6["trials"]) == ("t6-new", store.parents["table6"], "proxy", 7)

    csv = (out / "per_seed.csv").read_text().splitlines()
    assert "# command: tood-ablate run --all" in csv
    frame = pd.read_csv(out / "per_seed.csv", comment="#")
    latest = (store.parents["table6"], store.parents["table2"], store.parents["smoke"])
    with sqlite3.connect(store.root / "mlruns.db") as con:  # every trial of the three studies' latest launches
        children = con.execute("select count(*) from tags where key = 'mlflow.parentRunId' and value in (?, ?, ?)",
                               latest).fetchone()[0]
    assert len(frame) == children and set(frame["study"]) == {"smoke", "table2_assignment", "table6_alignment"}
    assert (out / "report.html").is_file() and (out / "table6_alignment" / "table6.md").is_file()
    machines = [line.split(" | ") for line in (out / "machines.md").read_text().splitlines() if line.startswith("| ")][1:]
    assert sum(len(m[3].split(",")) for m in machines) == len(frame)  # every trial's seed, once

    # the copy is a complete store: the same runs, and it renders the same table
    assert _runs(out / "mlruns.db") == _runs(store.root / "mlruns.db")
    again = tmp_path / "again"
    render_report("table6_alignment", f"sqlite:///{out / 'mlruns.db'}", again)
    assert (again / "table6_alignment" / "table6.md").read_text() == (out / "table6_alignment" / "table6.md").read_text()

    # publishing again replaces the folder's entry instead of adding one
    assert main(["publish", "--tracking-uri", store.uri, "--out", str(out), "--command", "second"]) == 0
    index = yaml.safe_load((results / "index.yaml").read_text())["folders"]
    assert sorted(index) == ["other", "proxy"] and index["proxy"]["command"] == "second"


def test_publish_errors_are_one_line(tmp_path, capsys):
    assert main(["publish", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}", "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    store = build_store(tmp_path / "store")
    code = main(["publish", "--tracking-uri", store.uri, "--out", str(tmp_path / "o"), "--diagnose", "experiments/topm.yaml"])
    assert code == 2 and "--diagnose experiments/topm.yaml: needs --launch" in capsys.readouterr().err


def test_publish_writes_the_headline_into_the_readme_between_its_markers(tmp_path, capsys):
    from reports.publish import HEADLINE_END

    store = build_store(tmp_path / "store")
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n<!-- headline from nowhere -->\nold table\n{HEADLINE_END}\nafter\n")
    out = tmp_path / "results" / "suite"
    args = ["publish", "--tracking-uri", store.uri, "--out", str(out), "--readme", str(readme)]
    assert main(args) == 0
    text = readme.read_text()
    headline = (out / "summary_headline.md").read_text()
    assert text == (f"# Title\n\nbefore\n<!-- headline from results/suite: written by `tood-ablate publish --readme`, "
                    f"do not edit -->\n\n{headline}\n{HEADLINE_END}\nafter\n")
    assert "| table6_alignment |" in headline and "old table" not in text
    assert main(args) == 0 and readme.read_text() == text  # publishing again writes the same file

    bare = tmp_path / "BARE.md"
    bare.write_text("# no markers\n")
    capsys.readouterr()
    assert main(["publish", "--tracking-uri", store.uri, "--out", str(tmp_path / "o2"), "--readme", str(bare)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--readme {bare}: expected one line starting '<!-- headline from '" in err[0]
    assert not (tmp_path / "o2").exists()  # checked before anything is written


def test_the_published_copy_reports_the_same_without_the_stores_artifacts(tmp_path):
    """The studies' grid.yaml goes beside the store copy: with the source's artifact folder gone (a
    fresh clone), publishing again from the copy gives the same tables (Table 6's grid has a row that
    never trained, which only the grid knows)."""
    import shutil

    store = build_store(tmp_path / "store")
    out, again = tmp_path / "results" / "suite", tmp_path / "results" / "again"
    assert main(["publish", "--tracking-uri", store.uri, "--out", str(out)]) == 0
    shutil.rmtree(store.root / "art6")
    assert main(["publish", "--tracking-uri", f"sqlite:///{out / 'mlruns.db'}", "--out", str(again)]) == 0
    for name in ("table6_alignment/table6.md", "table6_alignment/table6_claims.md", "summary_claims.md"):
        assert (again / name).read_text() == (out / name).read_text(), name
    assert (out / "mlartifacts" / "tood-ablate" / "table6_alignment" / store.parents["table6"] / "artifacts" /
            "grid.yaml").is_file()
