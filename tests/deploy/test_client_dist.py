"""The client's own distribution (client-dist/): it installs into a fresh virtualenv with its few
dependencies and works there with no module of the server present."""

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "client-dist"
INSTALL_WAIT_SECONDS = 300
SERVER_MODULES = (
    "api",
    "flows",
    "adapters",
    "falcon",
    "waitress",
    "limits",
    "core.store",
    "core.ledger",
)
PROBE = f"""
import importlib.util, sys
import client, client.spool
from wire.schemas import CreditRequest

assert client.__file__.startswith(sys.prefix), client.__file__
assert CreditRequest(amount="0.1", reason="r").amount == 100_000_000
present = [name for name in {SERVER_MODULES!r} if importlib.util.find_spec(name) is not None]
assert present == [], present
"""


def _project(path: Path) -> dict:
    return tomllib.loads(path.read_text())["project"]


def test_the_client_distribution_has_the_servers_version_and_dependency_bounds():
    client, server = _project(DIST / "pyproject.toml"), _project(ROOT / "pyproject.toml")
    assert client["version"] == server["version"]
    assert set(client["dependencies"]) <= set(server["dependencies"])


def test_the_client_distribution_installs_and_works_without_the_server(tmp_path):
    # A copy with its links resolved: the build writes into it, not into the repository, and a
    # module the links leave out is missing here as it would be for a user.
    source = tmp_path / "client-dist"
    shutil.copytree(DIST, source, symlinks=False)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # This environment's pip installs into the new one, from its cache when it can.
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", str(source)],
        check=True,
        timeout=INSTALL_WAIT_SECONDS,
    )
    clean = {name: value for name, value in os.environ.items() if not name.startswith("PYTHON")}
    subprocess.run([str(python), "-c", PROBE], cwd=tmp_path, env=clean, check=True)
