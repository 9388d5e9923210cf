#!/usr/bin/env bash
# Everything CI checks, from a fresh machine: set-up, lint, the whole test suite (slow, notebook and
# browser tests included) and the documentation build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
bash scripts/install-browser.sh
bash scripts/frontends.sh  # Notebook 7, Voila, classic Notebook 6.5 + ipywidgets 7.7 (tests/browser/test_frontends_browser.py)
# shellcheck disable=SC1091
. .venv/bin/activate
export PLOTLY_RENDERER=json HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
unset DISPLAY
echo "== ruff"
ruff check diffexplain tests benchmarks
ruff format --check diffexplain tests benchmarks
# Two pytest calls, so the slow layers always run: first everything but the real-browser widget tests
# and the notebook executions, then those two layers (JupyterLab in headless Chromium; every notebook
# in notebooks/ with nbclient). Both run even when the first fails; the script fails if either did.
# Arguments go to both calls (a call that selects no test counts as passed).
layer() {
  local name=$1 start=$SECONDS rc=0
  shift
  echo "== pytest: $name"
  python -m pytest -q "$@" || rc=$?
  [ "$rc" -eq 5 ] && rc=0  # no test selected (e.g. a path given that holds none of this layer)
  echo "== pytest: $name took $((SECONDS - start)) s (exit $rc)"
  return "$rc"
}
status=0
layer "fast layer" --timeout=900 -m "not browser and not notebook" "$@" || status=1
layer "browser and notebook layers" --timeout=3600 --durations=20 -m "browser or notebook" "$@" || status=1
if [ "$status" -ne 0 ]; then
  echo "== pytest failed"
  exit 1
fi
if [ -f mkdocs.yml ]; then
  echo "== docs"
  mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
fi
