"""Integration fixtures: a work folder per module and real servers, all stopped at teardown."""

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration_support import BillingServer, Database
from litellm_support import Billing


class Launcher:
    """Starts `billing serve` processes in one folder; ``stop_all`` stops every one it started."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[BillingServer] = []

    def __call__(self, database: Database, name: str, **options) -> BillingServer:
        """One server, returned once GET / answers 200."""
        return self.together(database, [name], **options)[0]

    def together(self, database: Database, names: list[str], **options) -> list[BillingServer]:
        """Several servers spawned at the same instant (racing their first start), then awaited."""
        servers = [BillingServer(self.workdir, database, name, **options) for name in names]
        self.started.extend(servers)
        for server in servers:
            server.wait_ready()
        return servers

    def stop_all(self) -> None:
        for server in reversed(self.started):
            server.stop()


@pytest.fixture(scope="module")
def database(backend: str, request: pytest.FixtureRequest, workdir: Path) -> Database:
    """The module's database, new: a SQLite file in a folder of its own (a module may ask for one
    per parameter), or a PostgreSQL schema."""
    if backend == "sqlite":
        folder = Path(tempfile.mkdtemp(prefix="db-", dir=workdir))
        return folder / f"{request.module.__name__.rsplit('.', 1)[-1]}.db"
    return request.getfixturevalue("postgres").new_schema()


@pytest.fixture(scope="module")
def workdir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])


@pytest.fixture(scope="module")
def launch(workdir: Path) -> Iterator[Launcher]:
    launcher = Launcher(workdir)
    try:
        yield launcher
    finally:
        launcher.stop_all()


@pytest.fixture(scope="module")
def billing(workdir: Path) -> Iterator[Billing]:
    """The module's `billing serve` for a LiteLLM proxy, restartable on its port (a module
    that needs another kind of server defines its own ``billing``)."""
    with Billing.running(workdir) as service:
        yield service
