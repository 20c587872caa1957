#!/usr/bin/env bash
# Set up (see setup.sh), make the Fashion-MNIST demo run with the shipped model if the store has
# none (no training: about half a minute on 2 cores), then open the dashboard on
# http://localhost:8501 while a background process computes the UMAP map (the Embeddings page
# says so until it is there). Extra arguments go to `streamlit run`.
#   bash scripts/demo.sh --check   the same, but start the server headless on port $DEMO_CHECK_PORT
#                                  (default 8599), wait until it answers, stop it: times a first run
set -euo pipefail
cd "$(dirname "$0")/.."
check=0
if [ "${1:-}" = "--check" ]; then check=1; shift; fi
bash scripts/setup.sh
store=${ARTIFACTS_DIR:-artifacts}
if [ ! -f "$store/fashion-mnist-demo/manifest.json" ]; then
  .venv/bin/python -m core demo --background-projection
else
  # starts the map again if an earlier one was cut short (a run with its map is left alone)
  .venv/bin/python -m core.analysis.projection --background "$store/fashion-mnist-demo"
fi
if [ "$check" = 0 ]; then
  exec .venv/bin/streamlit run dashboard/app.py "$@"
fi
port=${DEMO_CHECK_PORT:-8599}
.venv/bin/streamlit run dashboard/app.py --server.headless true --server.port "$port" "$@" >/dev/null 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
.venv/bin/python - "$port" <<'PY'
import sys, time, urllib.request
deadline = time.monotonic() + 60
while True:
    try:
        urllib.request.urlopen(f"http://localhost:{sys.argv[1]}/_stcore/health", timeout=1).read()
        print(f"demo: the dashboard answers on port {sys.argv[1]}", file=sys.stderr)
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("demo: the dashboard did not answer within 60 s")
        time.sleep(0.25)
PY
