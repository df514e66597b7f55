"""The import rules of the layout (README, "Layout"), read from the source: every import statement of every
module, at the top or inside a function, is checked.

- ``lsm_core.imaging`` imports neither torch nor the database, nor the rest of lsm_core but its error type
  and the classification tasks;
- ``lsm_core.ml`` does not import ``lsm_core.lab`` (nor the reports or the database layer's sessions);
- ``db`` imports nothing of lsm_core but its error type, and never torch;
- nothing below ``pages/`` and ``streamlit_app.py`` imports Streamlit;
- only ``lsm_core.lab.settings`` reads the environment.
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
