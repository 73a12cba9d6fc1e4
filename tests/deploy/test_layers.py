"""The layers of the brief: ``core`` knows no HTTP and no Prefect; ``flows`` call into ``core``
and never into ``api``. Checked on the source's imports, so a new module cannot slip past."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN = {
    "core": {"api", "flows", "adapters", "falcon", "waitress", "httpx", "prefect"},
    "flows": {"api"},
}


def imported_packages(path: Path) -> set[str]:
    """The top-level package of every absolute import in ``path``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(package):
    modules = sorted((ROOT / package).rglob("*.py"))
    assert modules, f"no modules under {package}/"
    offending = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in modules
    }
    assert {path: names for path, names in offending.items() if names} == {}
