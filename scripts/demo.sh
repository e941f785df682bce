#!/usr/bin/env bash
# The main job: the smoke ablation grid on local Ray, tracked in an embedded sqlite MLflow
# store (./mlruns.db), ending with the HTML report of the grid (its path is printed).
set -euo pipefail
cd "$(dirname "$0")/.."
export TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S=0
name="demo-$(date +%Y%m%d-%H%M%S)"
.venv/bin/tood-ablate run experiments/smoke.yaml --profile proxy --name "$name"
.venv/bin/tood-ablate status "$name"
.venv/bin/tood-ablate report smoke --out reports_out
echo "MLflow UI: .venv/bin/mlflow ui --backend-store-uri sqlite:///$(pwd)/mlruns.db  (then open http://127.0.0.1:5000)"
