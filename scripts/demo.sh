#!/usr/bin/env bash
# Set up (see setup.sh), build the Fashion-MNIST demo run if the store has none
# (about 8 minutes on 2 cores), then open the dashboard on http://localhost:8501.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2
store=${ARTIFACTS_DIR:-artifacts}
if [ ! -f "$store/fashion-mnist-demo/manifest.json" ]; then
  .venv/bin/python -m core demo
fi
exec .venv/bin/streamlit run dashboard/app.py "$@"
