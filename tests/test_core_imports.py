"""The core is UI-free (issue #30, part 4): importing diffexplain, running, saving a trace and writing its
HTML page load no widget code (no ipywidgets, no plotly), checked in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CODE = """
import json, sys
import diffexplain
from diffexplain import Explainer, Trace
from tests.tiny_parts import tiny_parts

loaded = {"import": sorted(sys.modules)}
ex = Explainer(**tiny_parts(), progress=False)
trace = ex.run("a red circle on the left", num_inference_steps=2, seed=0)
trace.save(sys.argv[1] + "/t.safetensors")
trace.to_html(sys.argv[1] + "/t.html")
Trace.load(sys.argv[1] + "/t.safetensors").to_html(sys.argv[1] + "/loaded.html")
loaded["save and page"] = sorted(sys.modules)
print(json.dumps(loaded))
"""

UI = ("ipywidgets", "plotly", "diffexplain.widgets", "anywidget")


def test_the_core_loads_no_widget_code(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", CODE, str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    for when, modules in loaded.items():
        ui = [m for m in modules if m.split(".")[0] in UI or m.startswith(UI)]
        assert ui == [], f"{when} loaded {ui}"
    assert (tmp_path / "t.html").stat().st_size > 0 and (tmp_path / "loaded.html").stat().st_size > 0


def test_hooks_do_not_import_the_family_registry():
    """hooks.py resolves names against the declared hook points (names.all_hook_names), not the families."""
    import ast

    import diffexplain.families
    from diffexplain.names import all_hook_names

    tree = ast.parse((REPO / "diffexplain" / "hooks.py").read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(m and m.startswith("diffexplain.families") for m in imported), imported
    # every family's own points are declared by its class, so a Hook may name them before meeting a model
    for family in diffexplain.families.FAMILIES.values():
        assert {p.name for p in family.extra_points} <= set(all_hook_names()), family.name


def test_no_import_cycle_at_run_time_not_even_through_function_local_imports():
    """scripts/import_graph.py reads every module's imports (module-level and inside functions) with ast."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "import_graph.py"
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "runtime import cycles (MOD and LOCAL arrows): 0" in result.stdout, (
        result.stdout + result.stderr
    )
