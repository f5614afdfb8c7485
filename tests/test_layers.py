"""The package's layers import one way: assets <- serving <- measuring <- (api, lab, cli).

Checked twice: every import statement in each layer's files (inside functions too), read from
the source; and a fresh interpreter importing each layer, which must not load the ones above.
"""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tritonlab import settings

PACKAGE = settings.ROOT / "tritonlab"
#: Each layer and the layers it must never import.
FORBIDDEN = {"assets": {"serving", "measuring"}, "serving": {"measuring"}}
TOP = {"api", "lab", "cli", "handin", "gpu_check", "gpu_bundle", "chameleon", "node"}


def imported_layers(path) -> set[str]:
    """The tritonlab subpackages and top-level modules a file imports, anywhere in it."""
    names = set()
    layer_of_file = path.parent.name
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and node.module.startswith("tritonlab"):
                parts = node.module.split(".")[1:]
            elif node.level == 1:  # from . import x / from .x import y: inside its own layer
                parts = [layer_of_file]
            elif node.level == 2:  # from .. import x / from ..x import y
                parts = (node.module or "").split(".") if node.module else []
                if not parts:
                    names.update(alias.name for alias in node.names)
                    continue
            else:
                continue
            if parts:
                names.add(parts[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tritonlab."):
                    names.add(alias.name.split(".")[1])
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_file_imports_a_layer_above_its_own(layer):
    files = sorted((PACKAGE / layer).glob("*.py"))
    assert files
    for path in files:
        bad = imported_layers(path) & (FORBIDDEN[layer] | TOP)
        assert not bad, f"{path.relative_to(settings.ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("layer", ["assets", "serving", "measuring"])
def test_importing_a_layer_loads_none_above_it(layer):
    above = {"assets": ("serving", "measuring"), "serving": ("measuring",), "measuring": ()}
    modules = " ".join(f"tritonlab.{layer}.{p.stem}" for p in (PACKAGE / layer).glob("*.py")
                       if p.stem != "__init__")
    code = (f"import importlib, sys\nfor m in '{modules}'.split(): importlib.import_module(m)\n"
            "print(sorted({n.split('.')[1] for n in sys.modules "
            "if n.startswith('tritonlab.') and n.count('.') >= 1}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=settings.ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    loaded = set(ast.literal_eval(out.stdout.strip().splitlines()[-1]))
    assert layer in loaded
    assert not loaded & (set(above[layer]) | TOP), f"importing {layer} loaded {sorted(loaded)}"


def test_the_checker_sees_a_forbidden_import(tmp_path):
    """The static check is not vacuous: a file importing upwards is caught."""
    (tmp_path / "assets").mkdir()
    path = tmp_path / "assets" / "bad.py"
    path.write_text("def f():\n    from ..measuring import perf\n    from . import samples\n")
    assert imported_layers(path) == {"measuring", "assets"}
