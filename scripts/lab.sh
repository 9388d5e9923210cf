#!/usr/bin/env bash
# Set up .venv, register its kernel, and open JupyterLab on the quickstart notebook.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh lab
# shellcheck disable=SC1091
. .venv/bin/activate
python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (diffexplain)" >/dev/null
args=(notebooks/00_quickstart.ipynb)
[ "$(id -u)" = 0 ] && args+=(--allow-root)
exec python -m jupyterlab "${args[@]}" "$@"
