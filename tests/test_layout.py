"""The import rules of the layout (README, "Layout"), read from the source: every import statement of every
module, at the top or inside a function, is checked.

- ``lsm_core.imaging`` imports neither torch nor the database, nor the rest of lsm_core but its error type
  and the classification tasks;
- ``lsm_core.ml`` does not import ``lsm_core.lab`` (nor the reports or the database layer's sessions);
- ``db`` imports nothing of lsm_core but its error type, and never torch;
- nothing below ``pages/`` and ``streamlit_app.py`` imports Streamlit;
- only ``lsm_core.lab.settings`` reads the environment;
- no two modules of ``lsm_core.imaging`` import each other, directly or in a ring (:func:`import_cycles`).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def imports(path: Path) -> set[str]:
    """Every module name ``path`` imports (``from a.b import c`` gives a.b and a.b.c)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def offending(folder: str, allowed) -> dict[str, list[str]]:
    out = {}
    for path in modules(folder):
        bad = sorted(name for name in imports(path) if not allowed(name))
        if bad:
            out[str(path.relative_to(ROOT))] = bad
    return out


def first(name: str) -> str:
    return name.split(".")[0]


def test_imaging_imports_neither_torch_nor_the_database():
    def allowed(name: str) -> bool:
        if first(name) in ("torch", "torchvision", "db", "sqlalchemy", "streamlit"):
            return False
        if first(name) == "lsm_core":
            return name.startswith(("lsm_core.errors", "lsm_core.classes", "lsm_core.imaging")) or name == "lsm_core"
        return True

    assert offending("lsm_core/imaging", allowed) == {}


def test_ml_does_not_import_lab_or_reports():
    def allowed(name: str) -> bool:
        return not name.startswith(("lsm_core.lab", "lsm_core.reports", "streamlit"))

    assert offending("lsm_core/ml", allowed) == {}


def test_db_imports_nothing_of_lsm_core_but_its_error_type():
    def allowed(name: str) -> bool:
        if first(name) in ("torch", "torchvision", "streamlit"):
            return False
        return first(name) != "lsm_core" or name in ("lsm_core.errors", "lsm_core.errors.LsmError")

    assert offending("db", allowed) == {}


@pytest.mark.parametrize("folder", ["lsm_core", "db"])
def test_nothing_below_the_pages_imports_streamlit(folder):
    assert offending(folder, lambda name: first(name) != "streamlit") == {}


def test_only_the_settings_read_the_environment():
    readers = []
    for folder in ("lsm_core", "db", "pages"):
        for path in modules(folder):
            text = path.read_text()
            if path.name != "settings.py" and ("os.environ" in text or "getenv" in text):
                readers.append(str(path.relative_to(ROOT)))
    # serve gives its children the settings as their environment (it reads nothing from it itself)
    assert readers == ["lsm_core/lab/serve.py"]


def test_the_rules_catch_a_breach(tmp_path):
    """The checks above could fail: a module importing torch is seen, inside a function too."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import torch.nn\n    from db.schema import Cell\n")
    assert {"torch.nn", "db.schema", "db.schema.Cell"} <= imports(bad)


def test_every_variable_the_settings_read_is_watched_and_documented():
    """A variable read by Settings.from_env but missing from VARIABLES is not seen when it changes (settings
    .current() keeps its old value: LSM_BLOB_HELPERS was), and one missing from the README is unknown to users."""
    import re

    from lsm_core.lab import settings

    source = (ROOT / "lsm_core/lab/settings.py").read_text()
    read = set(re.findall(r'(?:env\.get|_count|_number)\(\s*(?:env,\s*)?"(LSM_[A-Z_]+)"', source))
    assert {"LSM_DATA_DIR", "LSM_BLOB_HELPERS", "LSM_CHROMIUM"} <= read
    assert read <= set(settings.VARIABLES), read - set(settings.VARIABLES)
    readme = (ROOT / "README.md").read_text()
    table = settings.__doc__ or ""
    assert [v for v in sorted(read) if f"`{v}`" not in readme or f"| {v} |" not in table] == []


def module_name(path: Path) -> str:
    """The dotted name of a module file under ROOT (a package's ``__init__.py`` is the package)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(folder: str) -> dict[str, set[str]]:
    """Which modules of ``folder`` each module of it imports, from every import statement (at the top or
    inside a function): ``import a.b`` gives a.b; ``from a.b import c`` gives a.b.c when that is a module of
    the folder, else a.b; relative imports are resolved against the importing module."""
    paths = modules(folder)
    known = {module_name(p) for p in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        graph[name] = {other for other in found if other in known and other != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every ring of imports in ``graph`` (one per strongly connected component of more than one module, or a
    module importing itself), each as its sorted module names (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    rings: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                rings.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(rings)


@pytest.mark.parametrize("folder", ["lsm_core/imaging"])
def test_no_import_cycles(folder):
    assert import_cycles(import_graph(folder)) == []


def test_an_import_cycle_is_seen(tmp_path, monkeypatch):
    """The cycle check could fail: a ring through a function-level import and a relative import is found."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .c import g\n")
    (pkg / "sub" / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from pkg.a import x\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    graph = import_graph("pkg")
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.sub.c"} and graph["pkg.d"] == {"pkg.a"}
    assert import_cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.sub.c"]]
