"""A real PocketBase per module for the adapter and ``billing pocketbase init`` tests."""

from collections.abc import Iterator

import pytest
from pocketbase_server import PocketBaseServer, running_pocketbase


@pytest.fixture(scope="module")
def pocketbase(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PocketBaseServer]:
    with running_pocketbase(tmp_path_factory.mktemp("pocketbase")) as server:
        yield server
