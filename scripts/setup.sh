#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian machine: system packages
# (Chromium for the browser tests, the Fashion-MNIST data set for the demo) and a
# virtualenv in .venv with the pinned Python requirements. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
fc-list 2>/dev/null | grep -qi dejavu || need_apt+=(fonts-dejavu-core)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else sudo="none"; fi
  if [ "$sudo" = none ]; then
    echo "setup: please install the Debian packages: ${need_apt[*]}" >&2
  else
    echo "setup: apt-get install ${need_apt[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)" >&2
  $PY -m venv .venv
fi
stamp=.venv/.requirements.sha
want=$(cat requirements.txt requirements-test.txt requirements-ray.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python requirements (a few minutes the first time)" >&2
  # pip's own progress bars (downloads) on a terminal; quiet in CI logs
  if [ -t 2 ]; then pip_output=(--progress-bar on); else pip_output=(-q); fi
  .venv/bin/python -m pip install "${pip_output[@]}" --upgrade pip
  .venv/bin/python -m pip install "${pip_output[@]}" -r requirements-test.txt
  echo "setup: compiling the map's numba functions into their on-disk cache (once, a few seconds)" >&2
  .venv/bin/python -m core.analysis.projection --warm-up
  echo "$want" > "$stamp"
fi
