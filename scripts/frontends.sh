#!/usr/bin/env bash
# Front ends for the browser tests beside JupyterLab 4 (tests/browser/test_frontends_browser.py):
#   - Notebook 7 and Voilà: installed into .venv (they run on jupyter_server, like JupyterLab);
#   - classic Notebook 6.5 with ipywidgets 7.7 and widgetsnbextension 3.6 (the nearest to Colab's widget
#     stack that runs here): a venv of its own, $DIFFEXPLAIN_FRONTENDS_DIR/classic, holding only the
#     Jupyter and widget packages (anywidget too, at .venv's version: the StepExplorer needs its classic
#     nbextension, which lives in the venv's own share/ and etc/); a .pth file puts .venv's site-packages
#     after its own, so torch, diffusers, plotly and the editable diffexplain are .venv's (nothing large
#     is downloaded twice).
# Idempotent and quick when done already (a stamp file records what was installed). Needs .venv
# (scripts/setup.sh). Prints the seconds it took.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
root="$(pwd)"
dir="${DIFFEXPLAIN_FRONTENDS_DIR:-${TMPDIR:-/tmp}/diffexplain-frontends}"
# What the classic environment holds (the browser test and tests/test_widgets_compat.py check its versions).
# ipywidgets 7.7.1 is Colab's; widgetsnbextension 3.6.1 is its own release's front end (3.6.10, what pip
# picks for "~=3.6.0", fails to create Image and Output models: "_deserialize_state is not a function").
classic_reqs=("notebook>=6.5,<6.6" "ipywidgets==7.7.1" "widgetsnbextension==3.6.1" "ipykernel>=6.29,<7")
shared_reqs=("notebook>=7,<8" "voila>=0.5,<0.6")

# shellcheck disable=SC1091
. .venv/bin/activate
if ! python -c "import notebook, voila, sys; sys.exit(int(notebook.__version__.split('.')[0]) < 7)" 2>/dev/null; then
  echo "frontends: installing ${shared_reqs[*]} into .venv"
  python -m pip install -q "${shared_reqs[@]}" 2> >(grep -v "is ignored: it is neither" >&2)
fi
venv_site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
classic_reqs+=("anywidget==$(python -c 'import anywidget; print(anywidget.__version__)')")
deactivate

classic="$dir/classic"
stamp="$classic/.diffexplain-stamp"
want="${classic_reqs[*]} | $venv_site"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "frontends: creating $classic (classic Notebook 6.5, ipywidgets 7.7)"
  rm -rf "$classic"
  mkdir -p "$dir"
  base_python="$("$root/.venv/bin/python" -c 'import sys, os; print(os.path.join(sys.base_prefix, "bin", "python3"))')"
  "$base_python" -m venv "$classic"
  "$classic/bin/python" -m pip install -q --disable-pip-version-check "${classic_reqs[@]}" \
    2> >(grep -v "is ignored: it is neither" >&2)
  classic_site="$("$classic/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  # .venv's packages after the classic venv's own (its .pth files too: the editable diffexplain).
  echo "import site; site.addsitedir('$venv_site')" >"$classic_site/zz_diffexplain_venv.pth"
  "$classic/bin/python" -c "import ipywidgets, notebook, torch, diffexplain; print('frontends: classic has ipywidgets', ipywidgets.__version__, 'notebook', notebook.__version__)"
  echo "$want" >"$stamp"
fi
echo "frontends: ready in $((SECONDS - start)) s ($dir)"
