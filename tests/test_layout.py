"""The import rules of the layout (README, "Layout"), read from the source: every import statement of every
module, at the top or inside a function, is checked.

- ``lsm_core.imaging`` imports neither torch nor the database, nor the rest of lsm_core but its error type
  and the classification tasks;
- ``lsm_core.ml`` does not import ``lsm_core.lab`` (nor the reports or the database layer's sessions);
- ``db`` imports nothing of lsm_core but its error type, and never torch;
- nothing below ``pages/`` and ``streamlit_app.py`` imports Streamlit;
- only ``lsm_core.lab.settings`` reads the environment;
- no two modules of ``lsm_core`` or ``db`` import each other, directly or through others, and ``lsm_core.lab``
  does not import ``lsm_core.reports`` (the model card a Zoo export needs is built where the export is).
"""

from __future__ import annotations

import ast
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


def module_name(path: Path, root: Path = ROOT) -> str:
    """``lsm_core/lab/jobs.py`` -> ``lsm_core.lab.jobs``; a package is its ``__init__``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(folders: tuple[str, ...] = ("lsm_core", "db"), root: Path = ROOT) -> dict[str, set[str]]:
    """Which modules of ``folders`` each of them imports, at the top or inside a function.

    ``from a.b import c`` imports the module ``a.b.c`` where that is a module, else ``a.b``; relative imports
    are resolved; importing a package imports its ``__init__``. Modules outside ``folders`` are left out.
    """
    paths = {module_name(path, root): path for folder in folders for path in sorted((root / folder).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names if alias.name in paths}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                for alias in node.names:
                    if f"{base}.{alias.name}" in paths:
                        edges.add(f"{base}.{alias.name}")
                    elif base in paths:
                        edges.add(base)
        graph[name] = edges - {name}
    return graph


def rings(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted, in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_no_two_modules_import_each_other_directly_or_in_a_ring():
    assert rings(import_graph()) == []


def test_lab_does_not_import_reports():
    graph = import_graph()
    breaches = {name: sorted(n for n in edges if n.startswith("lsm_core.reports")) for name, edges in graph.items()}
    breaches = {name: bad for name, bad in breaches.items() if name.startswith("lsm_core.lab") and bad}
    assert breaches == {}


def test_the_ring_check_catches_a_ring(tmp_path):
    """A ring through three modules, one import inside a function and one relative, is seen; a chain is not."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from .. import c\n")
    (package / "c.py").write_text("import pkg.a\nimport os\n")
    (package / "d.py").write_text("from pkg.a import name\n")
    graph = import_graph(("pkg",), tmp_path)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.c"} and graph["pkg.d"] == {"pkg.a"}
    assert rings(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    assert rings({"x": {"y"}, "y": {"z"}, "z": set()}) == []


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
