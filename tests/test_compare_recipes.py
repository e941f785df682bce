"""tood-ablate compare: the claims of two stores side by side, on the hand-made store of
tests/test_reports.py and a copy of it with one value changed."""
import shutil
import subprocess
import sys

from mlflow.tracking import MlflowClient

from reports.compare_recipes import Recipe, comparison_table, main, recipe_claims
from tests.test_reports import build_store

CLAIM_PCC = "T-head + ATSS > parallel head + ATSS (PCC top-50)"
CLAIM_RED = "T-head + ATSS < parallel head + ATSS (#redundant)"


def _stores(tmp_path):
    (tmp_path / "a").mkdir()
    a = build_store(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    b_uri = f"sqlite:///{tmp_path / 'b' / 'mlruns.db'}"
    client = MlflowClient(b_uri)
    # recipe b: T-head + ATSS seed 0 has PCC 0.28 instead of 0.35 (its last value), and no Table 2
    run = next(r for r in client.search_runs([client.get_experiment_by_name("tood-ablate/table6_alignment").experiment_id])
               if r.data.tags.get("tood.row") == "T-head + ATSS" and r.data.tags.get("tood.seed") == "0")
    client.log_metric(run.info.run_id, "PCC", 0.28, step=4)
    client.delete_experiment(client.get_experiment_by_name("tood-ablate/table2_assignment").experiment_id)
    return a.uri, b_uri


def test_claims_side_by_side_by_hand(tmp_path):
    a_uri, b_uri = _stores(tmp_path)
    recipes = [Recipe("A", a_uri), Recipe("B", b_uri)]
    per_recipe = [recipe_claims(r)[0] for r in recipes]
    t = comparison_table(recipes, per_recipe)
    rows = {r[1]: dict(zip(t.header, r)) for r in t.rows}
    # A: per-seed PCC differences 0.35 - 0.30 and 0.37 - 0.32 (seed 2 failed): +0.05 twice, std 0
    assert (rows[CLAIM_PCC]["Δ ours (A)"], rows[CLAIM_PCC]["Verdict (A)"]) == ("+0.050 ± 0.000", "agrees")
    # B: 0.28 - 0.30 and +0.05: mean +0.015, std 0.049, t(1) interval +-0.445 holds 0
    assert (rows[CLAIM_PCC]["Δ ours (B)"], rows[CLAIM_PCC]["95% CI (B)"], rows[CLAIM_PCC]["Verdict (B)"]) == (
        "+0.015 ± 0.049", "[-0.430, +0.460]", "inconclusive")
    assert rows[CLAIM_PCC]["Verdicts differ"] == "yes" and rows[CLAIM_PCC]["n (B)"] == "2 (seed 2 in one row only)"
    # #redundant: 400 - 500 and 420 - 520 in both stores
    assert [rows[CLAIM_RED][c] for c in ("Δ ours (A)", "Verdict (A)", "Verdict (B)", "Verdicts differ")] == [
        "-100 ± 0", "agrees", "agrees", "no"]
    # Table 2 exists in A only: its claims are listed with '-' for B, and no verdict comparison
    t2 = [r for r in t.rows if r[0] == "table2_assignment"]
    assert t2 and all(dict(zip(t.header, r))["Δ ours (B)"] == "-" and r[-1] == "-" for r in t2)
    assert any(n.startswith("1 of the ") and "change verdict" in n for n in t.notes)


def test_cli_writes_the_table_and_refuses_bad_recipes(tmp_path):
    a_uri, b_uri = _stores(tmp_path)
    assert main(["--recipe", "A", a_uri, "--recipe", "B", b_uri, "--out", str(tmp_path / "out"), "--format", "md"]) == 0
    text = (tmp_path / "out" / "compare_claims.md").read_text()
    assert "The paper's claims under A / B" in text and CLAIM_PCC in text
    # a launch name selects that launch of each study: t6-old has one row, so no claim to compare
    assert main(["--recipe", "A", a_uri, "--recipe", "old", a_uri, "t6-old", "--out", str(tmp_path / "out")]) == 2
    cli = [sys.executable, "-m", "tood_ablate", "compare"]
    cases = {("--recipe", "A", a_uri): "give two or more --recipe",
             ("--recipe", "A", a_uri, "--recipe", "A", b_uri): "labels must differ",
             ("--recipe", "A", a_uri, "--recipe", "B"): "expected LABEL URI [LAUNCH]",
             ("--recipe", "A", a_uri, "--recipe", "B", f"sqlite:///{tmp_path / 'nope.db'}"): "--recipe B: tracking store",
             ("--recipe", "A", a_uri, "--recipe", "B", "http://127.0.0.1:9"): "--recipe B http://127.0.0.1:9: no MLflow server answers"}
    for args, message in cases.items():
        proc = subprocess.run([*cli, *args, "--out", str(tmp_path / "out2")], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr[-2000:])
