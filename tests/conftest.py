"""Fixtures every test folder shares: the store backends the store and API suites run on, the
real Redis on loopback with one key prefix per test, and process logging put back after a test
that runs the CLI in process."""

import logging
import os
import socket
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis
from pg_testing import ScratchDatabase, unavailable

import service.logs

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


REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_WAIT_SECONDS = 2.0
KEYS_DELETED_MAX = 10_000


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The loopback Redis; a test that needs it skips here when it is down, but fails in CI."""
    client = redis.Redis.from_url(
        REDIS_URL, socket_timeout=REDIS_WAIT_SECONDS, socket_connect_timeout=REDIS_WAIT_SECONDS
    )
    try:
        client.ping()
    except redis.RedisError as error:
        if os.environ.get("CI"):
            pytest.fail(f"Redis at {REDIS_URL} is required in CI: {error}")
        pytest.skip(f"Redis at {REDIS_URL} is not reachable: {error}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted afterwards."""
    prefix = f"billing-test-{uuid.uuid4().hex}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(f"{prefix}*", count=1000))[:KEYS_DELETED_MAX]
        if keys:
            client.delete(*keys)
    finally:
        client.close()


REDIS_PASSWORD = "hunter2-redis-password"


@pytest.fixture
def dead_redis_url() -> str:
    """A Redis URL (with a password, to prove it is never logged) where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"


@pytest.fixture
def process_logging_restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """For a test that calls ``service.cli.main`` in process: its ``configure_logging`` replaces the
    root logger's handlers and starts a log-writer thread; afterwards both are as they were."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr(logging, "logThreads", logging.logThreads)
    monkeypatch.setattr(logging, "logMultiprocessing", logging.logMultiprocessing)
    monkeypatch.setattr(logging.getLogger("httpx"), "level", logging.getLogger("httpx").level)
    monkeypatch.setattr(service.logs, "_writer", service.logs._writer)
    writer_before = service.logs._writer
    yield
    if service.logs._writer is not writer_before and service.logs._writer is not None:
        service.logs._writer.stop()
