#!/usr/bin/env bash
# The main job: a real small ablation -- the two ends of TOOD Table 6 on the synthetic proxy, one
# seed (experiments/demo.yaml) -- on local Ray, tracked in an embedded sqlite MLflow store
# (./mlruns.db), ending with its report (the paths are printed). ~6 min on two CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
name="demo-$(date +%Y%m%d-%H%M%S)"
start=$(date +%s)
.venv/bin/tood-ablate run experiments/demo.yaml --profile proxy --cpus-per-trial 1 --name "$name"
.venv/bin/tood-ablate status "$name"
.venv/bin/tood-ablate report demo --out reports_out
echo "demo: $(( $(date +%s) - start )) s. Report: reports_out/demo/report.html (tables: reports_out/demo/*.md)"
echo "MLflow UI: .venv/bin/mlflow ui --backend-store-uri sqlite:///$(pwd)/mlruns.db  (then open http://127.0.0.1:5000)"
