"""Re-read a store's claims with the grid files' claim shapes (no training): per claim the
verdict before (every claim a direction, top-m an equivalence) and after (the grid's claim:),
the test and p-value, and for an undecided paired claim the seeds a fixed-n test at 0.025 would
need at the observed effect (reports.claim_tests.seeds_to_decide).
Run: .venv/bin/python probes/reread_claims.py sqlite:////abs/path/mlruns.db   (a copy: reading
a store renders nothing, but keep the published one untouched)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from collections import Counter  # noqa: E402
from orchestration.grid import claim_spec, load_grid  # noqa: E402
from orchestration.launch import suite_grids  # noqa: E402
from reports.claims import compare  # noqa: E402
from reports.collect import collect_study, open_client  # noqa: E402
from reports.tables import summarize  # noqa: E402
from reports.claim_tests import seeds_to_decide  # noqa: E402
from reports.claims import seed_values  # noqa: E402

uri = sys.argv[1]
client = open_client(uri)
changes, total, before_c, after_c = [], 0, Counter(), Counter()
for path in suite_grids():
    g = load_grid(path)
    spec = claim_spec(g.raw.get("claim"), g.table, str(path))
    data = collect_study(client, g.study)
    rows = summarize(data)
    old = [c for c in compare(data.study, data.table, rows, data.trials) if c.is_claim]
    new = [c for c in compare(data.study, data.table, rows, data.trials, claim=spec) if c.is_claim]
    for o, n in zip(old, new):
        total += 1
        before_c[o.verdict] += 1; after_c[n.verdict] += 1
        need = ""
        if n.verdict == "inconclusive" and n.test is not None:
            r, f = seed_values(data.trials, n.row, n.metric), seed_values(data.trials, n.ref, n.metric)
            d = [r[s] - f[s] for s in n.diff.seeds]
            shape = n.test.shape
            if n.expect == "less" and shape == "margin": d = [-x for x in d]
            k = seeds_to_decide(d, shape, n.delta, 0.025, 100)
            need = f" seeds to decide at 0.025: {k if k is not None else '>100'}"
        mark = "CHANGED " if o.verdict != n.verdict else ""
        print(f"{mark}{g.study}: {n.claim}: {o.verdict} -> {n.verdict} [{n.test.test if n.test else '-'}, p={n.test.p_value if n.test else float('nan'):.3g}]{need}")
print("claims", total, "before", dict(before_c), "after", dict(after_c))
