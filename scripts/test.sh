#!/usr/bin/env bash
# Run the test suite in .venv. Extra arguments go to pytest (default: everything not marked slow).
# pytest's exit code 5 ("no tests collected") means the set-up is broken: report it as a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no tests -- the test set-up is broken" >&2
    exit 1
fi
exit "$rc"
