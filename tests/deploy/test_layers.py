"""The layers of the brief: ``core`` knows no HTTP and no Prefect; ``flows`` call into ``core``
and never into ``api``; ``api`` is the HTTP layer alone, which the process runtime (``service``)
wires to ``flows`` and ``adapters``, never the other way, and which reaches storage only through
the ledger, never ``core.store``; the wire contract and the client need nothing of the server.
Checked on the source's imports, so a new module cannot slip past, and for the client on what
importing it really loads."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Entries are dotted prefixes: "core.store" forbids core.store and every module under it.
SERVER = {"api", "flows", "adapters", "service", "core.store", "core.ledger"}
SERVER |= {"falcon", "waitress", "limits"}
FORBIDDEN = {
    "core": {"api", "flows", "adapters", "service", "wire", "client"}
    | {"falcon", "waitress", "httpx", "prefect"},
    "adapters": {"api", "flows", "service"},
    "flows": {"api", "service"},
    "api": {"service", "flows", "adapters", "core.store"},
    "wire": SERVER | {"client"},
    "client": SERVER,
}
# The modules of core the client's distribution ships (client-dist/core links to them).
CORE_SHIPPED = {f"core.{path.stem}" for path in (ROOT / "client-dist" / "core").glob("*.py")}


def imported_modules(path: Path) -> set[str]:
    """Every module an absolute import in ``path`` may name: ``from a import b`` gives ``a``
    and ``a.b``, since ``b`` may be a module of its own."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def is_under(module: str, prefixes: set[str]) -> bool:
    return any(module == prefix or module.startswith(f"{prefix}.") for prefix in prefixes)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(package):
    modules = sorted((ROOT / package).rglob("*.py"))
    assert modules, f"no modules under {package}/"
    offending = {
        str(path.relative_to(ROOT)): sorted(
            module for module in imported_modules(path) if is_under(module, FORBIDDEN[package])
        )
        for path in modules
    }
    assert {path: names for path, names in offending.items() if names} == {}


def test_the_client_takes_from_core_only_the_modules_its_distribution_ships():
    assert CORE_SHIPPED >= {"core.__init__", "core.money"}
    sources = [
        *(ROOT / "client").rglob("*.py"),
        *(ROOT / "wire").rglob("*.py"),
        *(ROOT / "client-dist" / "core").glob("*.py"),
    ]
    missing = {
        str(path.relative_to(ROOT)): sorted(
            module
            for module in imported_modules(path)
            if module.startswith("core.") and not is_under(module, CORE_SHIPPED)
        )
        for path in sources
    }
    assert {path: names for path, names in missing.items() if names} == {}


def test_importing_the_client_loads_nothing_of_the_server():
    """What the modules it imports load in turn, which the source check cannot see."""
    probe = "import sys, client, client.spool; print('\\n'.join(sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "wire.schemas" in loaded
    assert sorted(module for module in loaded if is_under(module, SERVER)) == []
