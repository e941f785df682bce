#!/usr/bin/env bash
# Write a finished (or partly finished) suite launch's results into one folder, as committed
# under reports/results/proxy/: the report of every study (md/tex/html, plots), the per-seed
# CSV, the packing JSON, the PCC diagnostics of Tables 4 and 6 and top-m, and a consistent copy
# of the MLflow store.
#   scripts/publish_results.sh STORE_DB STORAGE LAUNCH OUT "COMMAND THAT RAN THE LAUNCH"
# e.g. scripts/publish_results.sh runs/mlruns.db runs/ray suite reports/results/proxy \
#        "tood-ablate run --all --profile proxy --cpus-per-trial 1 --name suite"
# DIAGNOSE="table6_alignment" limits the PCC diagnostics (~10 s a checkpoint) to those grids.
set -euo pipefail
if [ $# -ne 5 ]; then
    sed -n 2,8p "$0" >&2
    exit 2
fi
db=$(realpath "$1"); storage=$(realpath "$2"); launch=$3; out=$4; command=$5
root=$(cd "$(dirname "$0")/.." && pwd)
py="$root/.venv/bin/python"
[ -x "$py" ] || py=python
[ -f "$db" ] || { echo "publish_results.sh: $db: no such MLflow store (expected the sqlite file of the launch)" >&2; exit 2; }
[ -f "$storage/$launch/tood_launch.json" ] || { echo "publish_results.sh: $storage/$launch: no launch record (expected tood_launch.json)" >&2; exit 2; }
uri="sqlite:///$db"
mkdir -p "$out"
cd "$root"
"$py" -m orchestration.launch report --all --out "$out" --tracking-uri "$uri"
"$py" -m reports.export --all --out "$out/per_seed.csv" --tracking-uri "$uri" --header "command: $command"
"$py" benchmarks/bench_suite.py "$launch" --storage-path "$storage" --out "$out/suite_packing.json" > /dev/null
# the diagnostics find the trials by the config they trained: the launch's profile, seeds and --set
trained_flags=$("$py" -c '
import json, sys
o = json.load(open(sys.argv[1]))["options"]
print("--profile=" + o["profile"])
if o.get("seeds"):
    print("--seeds=" + ",".join(map(str, o["seeds"])))
for k, v in (o.get("overrides") or {}).items():
    print("--set=" + k + "=" + json.dumps(v))' "$storage/$launch/tood_launch.json")
mapfile -t trained <<< "$trained_flags"
for grid in ${DIAGNOSE-table6_alignment table4_alpha_beta topm}; do  # DIAGNOSE="": none
    "$py" -m orchestration.launch diagnose "experiments/$grid.yaml" --storage "$storage" "${trained[@]}" --out "$out/alignment_diagnostics_$grid"
done
# sqlite's online backup: consistent even while a WAL-mode store is being written; the copy is
# one self-contained file (rollback journal)
"$py" -c "import sqlite3, sys; src = sqlite3.connect(sys.argv[1]); dst = sqlite3.connect(sys.argv[2]); src.backup(dst); dst.execute('PRAGMA journal_mode=DELETE'); dst.close()" \
    "$db" "$out/mlruns.db.tmp"
mv "$out/mlruns.db.tmp" "$out/mlruns.db"
echo "published $launch into $out"
