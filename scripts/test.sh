#!/usr/bin/env bash
# Set up (see setup.sh), then run the whole test suite on every core (pytest-xdist; a test file's
# tests stay on one worker, so its module fixtures are made once). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/python -m pytest -n "${PYTEST_WORKERS:-auto}" --dist loadfile "$@"
