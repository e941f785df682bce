#!/usr/bin/env bash
# Create .venv (if missing) and install the project with everything it needs.
# CPU (default): torch is pinned by constraints/cpu.txt to the 2.13.0 CPU wheel.
# GPU: install your CUDA torch into .venv first (or set TOOD_TORCH=keep); the
# torch already present is then kept and only the rest is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TOOD_VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.tood-installed"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt constraints/cpu.txt ]; then
    exit 0
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
constraint=(-c constraints/cpu.txt)
if [ "${TOOD_TORCH:-}" = keep ] || "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    constraint=()
    echo "bootstrap: keeping installed torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo '(none)')"
fi
"$VENV/bin/python" -m pip install --quiet "${constraint[@]}" -e ".[dev]"
touch "$stamp"
