"""Fixtures every test folder shares: the store backends the store and API suites run on."""

from collections.abc import Iterator

import psycopg
import pytest
from pg_testing import ScratchDatabase, unavailable

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[ScratchDatabase]:
    """A scratch database on the local PostgreSQL server for the whole session."""
    try:
        database = ScratchDatabase()
    except psycopg.OperationalError as error:
        unavailable(str(error).strip())
    try:
        yield database
    finally:
        database.drop()


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The store a test runs on: every store and API test runs on both."""
    if request.param == "postgres":
        request.getfixturevalue("postgres")
    return request.param
