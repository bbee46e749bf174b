"""The import structure of ``dfq_gpu`` and ``kernels``: no import cycles, and the layering.

Every ``.py`` file under ``dfq_gpu/`` and ``kernels/`` is parsed with ``ast`` (nothing is
imported): every ``import`` statement counts, at module level or inside a function, relative
imports resolved. The layers, from the bottom::

    errors, formulas, nn        no import of the package (formulas: numpy, scipy; nn: torch, numpy)
    layers                      the layer registry (torch, numpy; may use the three above)
    graph/                      tracing, node vocabulary, regions, statistics
    passes/                     the FP32 transformations (passes/base.py: Workspace and helpers)
    quant/, modules.py          quantization; may use passes/base.py, never the reverse
    int8/, api, io, ...         the integer network, the recipe, everything user-facing
    tutorial/                   the notebooks' chapters (ipywidgets, matplotlib): nothing imports it

``kernels/`` imports nothing from ``dfq_gpu``. Two tests import for real, in fresh processes:
``import dfq_gpu`` loads neither the tutorial nor ipywidgets nor matplotlib, and the tutorial
without ipywidgets says which extra to install.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dfq_gpu", "kernels")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            out[_module_name(path)] = path
    return out


SOURCES = _sources()


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(module: str) -> set[str]:
    """Every module ``module`` imports (absolute names; a name imported from a package counts as
    the submodule when there is one, else as the package)."""
    path = SOURCES[module]
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                found.add(sub if sub in SOURCES else base)
    found.discard("")
    return found


IMPORTS = {m: imports_of(m) for m in SOURCES}


def internal(module: str) -> set[str]:
    """The modules of this repository that ``module`` imports."""
    return {t for t in IMPORTS[module] if t.split(".")[0] in PACKAGES}


def external(module: str) -> set[str]:
    """The top-level names of the other distributions ``module`` imports."""
    return {t.split(".")[0] for t in IMPORTS[module] if t.split(".")[0] not in PACKAGES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for t in sorted(graph.get(n, ())):
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state:
                found = visit(t)
                if found:
                    return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def _in(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _violations(modules: list[str], allowed) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for m in modules:
        bad = sorted(t for t in internal(m) if not allowed(t))
        if bad:
            out[m] = bad
    return out


STDLIB = set(sys.stdlib_module_names) | {"__future__"}


def test_sources_are_found():
    for name in ("dfq_gpu", "dfq_gpu.api", "dfq_gpu.nn", "dfq_gpu.graph.trace", "dfq_gpu.passes.base",
                 "dfq_gpu.quant.simulate", "dfq_gpu.quant.bias_correction", "kernels", "kernels.reference"):
        assert name in SOURCES, name
    assert "dfq_gpu.modules" in IMPORTS["dfq_gpu.io"]
    assert "dfq_gpu.graph.ops" in IMPORTS["dfq_gpu.passes.absorb"]  # from ..graph import ops


def test_cycle_finder():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_resolve_relative_imports():
    assert _resolve("dfq_gpu.graph.ops", False, 1, "trace") == "dfq_gpu.graph.trace"
    assert _resolve("dfq_gpu.graph.ops", False, 2, "modules") == "dfq_gpu.modules"
    assert _resolve("dfq_gpu.graph.ops", False, 2, None) == "dfq_gpu"
    assert _resolve("dfq_gpu.int8", True, 1, "convert") == "dfq_gpu.int8.convert"


def test_no_import_cycle():
    graph = {m: internal(m) for m in SOURCES}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_graph_imports_nothing_above_it():
    mods = [m for m in SOURCES if _in(m, "dfq_gpu.graph")]
    assert mods
    bad = _violations(mods, lambda t: _in(t, "dfq_gpu.graph", "dfq_gpu.nn", "dfq_gpu.errors", "dfq_gpu.formulas",
                                                    "dfq_gpu.layers"))
    assert not bad, f"graph/ imports from above it: {bad}"


def test_bottom_modules_import_no_package_module():
    for m, outside in (("dfq_gpu.nn", {"torch", "numpy"}), ("dfq_gpu.formulas", {"numpy", "scipy"}),
                       ("dfq_gpu.errors", set())):
        inner = internal(m) - {"dfq_gpu.formulas"} if m == "dfq_gpu.nn" else internal(m)
        assert not inner, f"{m} imports {sorted(inner)}"
        extra = external(m) - outside - STDLIB
        assert not extra, f"{m} imports {sorted(extra)}"


def test_layer_registry_stays_at_the_bottom():
    bad = _violations(["dfq_gpu.layers"], lambda t: _in(t, "dfq_gpu.nn", "dfq_gpu.errors", "dfq_gpu.formulas"))
    assert not bad, f"dfq_gpu/layers.py imports from above the bottom modules: {bad}"
    extra = external("dfq_gpu.layers") - {"torch", "numpy"} - STDLIB
    assert not extra, f"dfq_gpu.layers imports {sorted(extra)}"


def test_passes_never_import_quantization():
    mods = [m for m in SOURCES if _in(m, "dfq_gpu.passes")]
    assert mods
    bad = _violations(mods, lambda t: not _in(t, "dfq_gpu.quant", "dfq_gpu.modules", "dfq_gpu.int8", "dfq_gpu.api",
                                                  "dfq_gpu.io", "dfq_gpu.cli", "kernels"))
    assert not bad, f"passes/ imports quantization or later layers: {bad}"


def test_quant_uses_only_the_base_of_passes():
    mods = [m for m in SOURCES if _in(m, "dfq_gpu.quant")]
    assert mods
    bad = _violations(mods, lambda t: not (_in(t, "dfq_gpu.passes") and t != "dfq_gpu.passes.base")
                      and not _in(t, "dfq_gpu.int8", "dfq_gpu.api", "dfq_gpu.io", "dfq_gpu.cli"))
    assert not bad, f"quant/ imports passes other than passes/base.py, or later layers: {bad}"


@pytest.mark.parametrize("module", ["dfq_gpu.modules", "dfq_gpu.passes.base"])
def test_quantized_layers_and_workspace_stay_low(module):
    bad = _violations([module], lambda t: not _in(t, "dfq_gpu.int8", "dfq_gpu.api", "dfq_gpu.io", "dfq_gpu.cli",
                                                  "dfq_gpu.quant.simulate"))
    assert not bad, bad


def test_kernels_do_not_import_dfq_gpu():
    mods = [m for m in SOURCES if _in(m, "kernels")]
    bad = _violations(mods, lambda t: _in(t, "kernels"))
    assert not bad, f"kernels/ imports dfq_gpu: {bad}"


def test_only_the_tutorial_imports_the_tutorial_and_ipywidgets():
    """``dfq_gpu.tutorial`` is an optional layer on top (the ``notebooks`` extra): no other module
    imports it, and no other module imports ``ipywidgets`` or ``IPython``."""
    mods = [m for m in SOURCES if not _in(m, "dfq_gpu.tutorial")]
    assert "dfq_gpu.tutorial.common" in SOURCES and "dfq_gpu.tutorial.ch03_equalization" in SOURCES
    bad = _violations(mods, lambda t: not _in(t, "dfq_gpu.tutorial"))
    assert not bad, f"modules outside dfq_gpu.tutorial import it: {bad}"
    widgets = {m: sorted(external(m) & {"ipywidgets", "IPython"}) for m in mods}
    assert not {m: w for m, w in widgets.items() if w}, widgets


def _run_python(code: str) -> str:
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def test_import_dfq_gpu_loads_no_tutorial_widgets_or_plots():
    out = _run_python("import sys, dfq_gpu\n"
                      "print(sorted(m for m in ('dfq_gpu.tutorial', 'dfq_gpu.bench', 'ipywidgets', 'matplotlib')"
                      " if m in sys.modules))")
    assert out == "[]", out


def test_tutorial_without_the_notebooks_extra_says_what_to_install():
    out = _run_python("import sys\n"
                      "sys.modules['ipywidgets'] = None\n"
                      "try:\n"
                      "    import dfq_gpu.tutorial\n"
                      "except ImportError as exc:\n"
                      "    print(exc)\n"
                      "print('dfq_gpu' in sys.modules)")
    assert "pip install 'dfq_gpu[notebooks]'" in out and "ipywidgets" in out and out.endswith("True"), out
