"""Hostile request targets against a real ``billing serve``, on each store.

Every route of the app (enumerated from the app itself, so a new route is covered the day it is
added) × GET, POST, PUT, PATCH and DELETE × no key, a wrong key, the other keys and the right
key × the spellings of its path that waitress and Falcon treat specially, written as raw request
lines over a socket (HTTP clients normalise or refuse them). Nothing answers 2xx without the
route's own key, every answer is JSON, a spelling that is not a plain path is refused before
routing, and what was refused changed nothing.
"""

import json
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import falcon
import falcon.inspect
import falcon.testing
import httpx
import pytest

from api.app import BillingApp, create_app
from api.auth import Access
from core.service import open_ledger
from core.settings import Settings, resolve_keys

# BillingServer and its helpers live with the integration tests, whose folder is on the import
# path only when one of its modules is collected.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from integration_support import (  # noqa: E402
    ADMIN_KEY,
    API_KEY,
    BillingServer,
    admin_headers,
    api_headers,
    create_product,
    provision_user,
    serving,
)

METRICS_KEY = "hostile-metrics-key-0123456789"
SOCKET_TIMEOUT_SECONDS = 10.0
USER = "alice"
# Falcon's answer for a path no route matches, as the app writes it.
ROUTE_NOT_FOUND = ("not_found", "404 Not Found")
PATH_PARAMETER = re.compile(r"\{[^}]*\}")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# Bodies a call with the right key would accept: a refused call that got through would change
# something and answer 2xx. A route not listed here is sent an empty object.
BODIES = {
    "/api/check-budget": {"user_id": USER, "model": "gpt-4o", "cost_estimate": 1},
    "/api/log-usage": {
        "user_id": USER,
        "model": "gpt-4o",
        "request_id": "hostile-log",
        "tokens_input": 1,
        "tokens_output": 1,
        "cost_total": 0.001,
    },
    "/api/log-usage/batch": {
        "records": [
            {
                "user_id": USER,
                "model": "gpt-4o",
                "request_id": "hostile-batch",
                "tokens_input": 1,
                "tokens_output": 1,
                "cost_total": 0.001,
            }
        ]
    },
    "/api/release-reservation": {"request_id": "hostile-hold"},
    "/api/admin/provision-user": {
        "email": "mallory@example.com",
        "password": "long enough password",
        "product_id": "basic",
        "user_id": "mallory",
    },
    "/api/admin/products": {"id": "basic", "name": "Free money", "monthly_budget": 1_000_000},
    "/api/admin/tenants": {"id": "default", "name": "Hijacked", "monthly_budget": 1_000_000},
    "/api/admin/users/{user_id}": {"status": "suspended"},
    "/api/admin/users/{user_id}/credits": {
        "amount": 1_000_000,
        "reason": "free money",
        "grant_id": "hostile-grant",
    },
}
# The right credential of each access, and what else a caller might send in its place.
RIGHT = {
    Access.PUBLIC: {},
    Access.GATEWAY: {"X-API-Key": API_KEY},
    Access.ADMIN: {"X-Admin-Key": ADMIN_KEY},
    Access.METRICS: {"Authorization": f"Bearer {METRICS_KEY}"},
}
WRONG = {
    Access.GATEWAY: {"X-API-Key": "w" * 32},
    Access.ADMIN: {"X-Admin-Key": "w" * 32},
    Access.METRICS: {"Authorization": "Bearer " + "w" * 32},
}
SWAPPED = {  # another access's key in this access's header
    Access.GATEWAY: {"X-API-Key": ADMIN_KEY},
    Access.ADMIN: {"X-Admin-Key": API_KEY},
    Access.METRICS: {"Authorization": f"Bearer {API_KEY}"},
}


@dataclass(frozen=True)
class Route:
    template: str
    access: Access | None  # None: the app serves it but never declared who may call it
    methods: frozenset[str]

    @property
    def path(self) -> str:
        return PATH_PARAMETER.sub(USER, self.template)


def routes_of(app: BillingApp) -> list[Route]:
    """Every route the app's router serves, with the access it declares and its methods
    (Falcon's own OPTIONS and 405 responders left out)."""
    declared = dict(app.route_access.items())
    return [
        Route(
            route.path,
            declared.get(route.path),
            frozenset(method.method for method in route.methods if not method.internal),
        )
        for route in falcon.inspect.inspect_routes(app)
    ]


def credentials(access: Access | None) -> dict[str, dict[str, str]]:
    """What a caller may send: the right credential (none for a public route) and, for a route
    that asks for one, the wrong ones. An undeclared route has no right one."""
    if access is Access.PUBLIC:
        return {"no key": {}}
    offered = {"no key": {}}
    if access is not None:
        offered.update(
            {"right key": RIGHT[access], "wrong key": WRONG[access], "swapped": SWAPPED[access]}
        )
    for other, headers in RIGHT.items():
        if other not in (access, Access.PUBLIC):
            offered[f"the {other.value} key"] = headers
    return offered


def _inner(path: str, separator: str) -> str:
    """``path`` with its first inner slash written as ``separator`` (one appended to a path of
    one segment)."""
    if "/" in path[1:]:
        return "/" + path[1:].replace("/", separator, 1)
    return path + separator


# Spellings of a route's path: (name, target from path and port, accepted?). An accepted one
# reaches the route as its plain path would; any other is refused before routing.
FORMS: list[tuple[str, Callable[[str, int], str], bool]] = [
    ("origin-form", lambda path, port: path, True),
    ("trailing slash", lambda path, port: path.rstrip("/") + "/", True),
    ("absolute-form", lambda path, port: f"http://127.0.0.1:{port}{path}", True),
    ("no leading slash", lambda path, port: path[1:] or "*", False),
    ("double leading slash", lambda path, port: "/" + path, False),
    ("empty segment", lambda path, port: _inner(path, "//"), False),
    ("dot segment", lambda path, port: _inner(path, "/./"), False),
    ("dot-dot segment", lambda path, port: "/x/.." + path, False),
    ("encoded dot-dot segment", lambda path, port: "/x/%2e%2E" + path, False),
    ("encoded slash", lambda path, port: _inner(path, "%2F"), False),
    ("every slash encoded", lambda path, port: "/" + path[1:].replace("/", "%2f") + "%2f", False),
    ("absolute-form, dot segment", lambda path, port: f"http://127.0.0.1:{port}/.{path}", False),
    ("absolute-form, another scheme", lambda path, port: f"ftp://127.0.0.1:{port}{path}", False),
    ("absolute-form, unclosed IPv6 host", lambda path, port: f"http://[::1{path}", False),
]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


class RawConnection:
    """One keep-alive HTTP/1.1 connection that sends each request line exactly as written;
    reconnects when the server closes after an answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._sock: socket.socket | None = None
        self._buffer = b""

    def request(
        self, method: str, target: str, headers: dict[str, str], body: bytes = b""
    ) -> Answer:
        if self._sock is None:
            self._sock = socket.create_connection(
                ("127.0.0.1", self.port), timeout=SOCKET_TIMEOUT_SECONDS
            )
            self._buffer = b""
        lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{self.port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}", "", ""]
        self._sock.sendall("\r\n".join(lines).encode("latin-1") + body)
        return self._answer(method)

    def _answer(self, method: str) -> Answer:
        while b"\r\n\r\n" not in self._buffer:
            self._fill()
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
        length = 0 if method == "HEAD" else int(headers.get("content-length", "0"))
        while len(self._buffer) < length:
            self._fill()
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Answer(int(status_line.split()[1]), headers, body)

    def _fill(self) -> None:
        assert self._sock is not None
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection before answering")
        self._buffer += chunk

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@contextmanager
def built_app(folder: Path) -> Iterator[BillingApp]:
    """The app ``billing serve`` runs (``create_app``), over a SQLite file in ``folder``."""
    settings = Settings(
        data_dir=folder,
        database_url=f"sqlite:///{folder}/routes.db",
        billing_api_key=API_KEY,
        admin_secret_key=ADMIN_KEY,
        metrics_key=METRICS_KEY,
    )
    store, ledger = open_ledger(settings)
    try:
        yield create_app(settings, resolve_keys(settings), ledger)
    finally:
        store.close()


@pytest.fixture(scope="module")
def app_routes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Route]]:
    with built_app(tmp_path_factory.mktemp("routes")) as app:
        yield routes_of(app)


@pytest.fixture(scope="module")
def server(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BillingServer]:
    """One server for the module on each store, with METRICS_KEY set (so /metrics asks for a
    key too), a plan and alice on it."""
    workdir = tmp_path_factory.mktemp(f"hostile-{backend}")
    database = (
        workdir / "hostile.db"
        if backend == "sqlite"
        else request.getfixturevalue("postgres").new_schema()
    )
    billing = BillingServer(workdir, database, "hostile", extra_env={"METRICS_KEY": METRICS_KEY})
    with serving(billing) as client:
        create_product(client, "basic", 10)
        provision_user(client, USER, "basic", "default")
        yield billing


def _state(port: int) -> list[tuple[int, object]]:
    """What a refused request must leave as it was, read with the right keys (the usage view
    without its ``to``, which is now)."""
    reads = [
        ("/api/admin/products", admin_headers()),
        (f"/api/admin/users/{USER}", admin_headers()),
        ("/api/admin/users/mallory", admin_headers()),
        (f"/api/users/{USER}/budget", api_headers()),
        (f"/api/users/{USER}/usage", api_headers()),
    ]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as client:
        answers = [client.get(path, headers=headers) for path, headers in reads]
    return [
        (answer.status_code, {k: v for k, v in answer.json().items() if k != "to"})
        for answer in answers
    ]


def _body(template: str, method: str) -> bytes:
    if method in ("GET", "DELETE"):
        return b""
    return json.dumps(BODIES.get(template, {})).encode()


def _error(answer: Answer) -> tuple[str, str] | None:
    """The ``error`` and ``message`` of a JSON error body, or None when it is not one."""
    if not answer.headers.get("content-type", "").startswith("application/json"):
        return None
    try:
        body = answer.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    error, message = body.get("error"), body.get("message")
    if not (isinstance(error, str) and error and isinstance(message, str) and message):
        return None
    return error, message


WORST = "2xx without the route's key"


def _judge(
    route: Route, form_accepted: bool, credential: str, method: str, answer: Answer
) -> str | None:
    """What is wrong with ``answer`` (a string), or None."""
    right = credential == "right key" or route.access is Access.PUBLIC
    if 200 <= answer.status < 300 and not right:
        return WORST
    if 200 <= answer.status < 300:
        if route.template == "/metrics":
            ok = answer.headers.get("content-type", "").startswith("text/plain")
            return None if ok else "metrics not in the text format"
        try:
            answer.json()
        except ValueError:
            return "a 2xx that is not JSON"
        return None if form_accepted else "2xx for a target that is not a plain path"
    error = _error(answer)
    if error is None:
        return "an error that is not JSON {error, message}"
    if not form_accepted:
        return None if (answer.status, error[0]) == (400, "bad_request") else "not a 400"
    if not right:
        return None if (answer.status, error[0]) == (401, "unauthorized") else "not a 401"
    if method not in route.methods:
        return None if answer.status == 405 else "not a 405"
    if (
        answer.status >= 500
        or error[0] in ("unauthorized", "bad_request", "method_not_allowed")
        or error == ROUTE_NOT_FOUND
    ):
        return "the right key did not reach the route"
    return None


def _sweep(port: int, routes: list[Route], keep: Callable[[str], bool]) -> tuple[int, list[str]]:
    """Send every route × method × credential kept by ``keep`` × form; (requests, faults)."""
    connection = RawConnection(port)
    faults: list[str] = []
    sent = 0
    try:
        for route in routes:
            for credential, headers in credentials(route.access).items():
                if not keep(credential):
                    continue
                for method in METHODS:
                    body = _body(route.template, method)
                    for form, spell, accepted in FORMS:
                        target = spell(route.path, port)
                        answer = connection.request(method, target, headers, body)
                        sent += 1
                        fault = _judge(route, accepted, credential, method, answer)
                        if fault is not None:
                            faults.append(
                                f"{method} {target} [{credential}, {form}] -> {answer.status}"
                                f" {answer.body[:120]!r}: {fault}"
                            )
    finally:
        connection.close()
    return sent, faults


def test_every_route_the_app_serves_declares_its_access(app_routes: list[Route]) -> None:
    assert {route.template for route in app_routes} >= {"/", "/api/check-budget", "/metrics"}
    assert [route.template for route in app_routes if route.access is None] == []


class _Resource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"ran": True}


def test_a_route_slipped_in_without_a_declared_access_fails_both_checks(tmp_path: Path) -> None:
    """``BillingApp.add_route`` takes no route without an access; one added around it (Falcon's
    own ``add_route``) is found by the enumeration, and every answer it gives fails the sweep."""
    with built_app(tmp_path) as app:
        with pytest.raises(TypeError):
            app.add_route("/api/slipped-in", _Resource())
        falcon.App.add_route(app, "/api/slipped-in", _Resource())
        slipped = [route for route in routes_of(app) if route.access is None]
        assert [route.template for route in slipped] == ["/api/slipped-in"]
        client = falcon.testing.TestClient(app)
        for credential, headers in credentials(None).items():
            result = client.simulate_get("/api/slipped-in", headers=headers)
            answer = Answer(
                result.status_code,
                {name.lower(): value for name, value in result.headers.items()},
                result.content,
            )
            assert _judge(slipped[0], True, credential, "GET", answer) is not None, credential


def _report(sent: int, faults: list[str], seconds: float) -> str:
    """How many answers were wrong, by fault, and the first of them, worst (a 2xx) first."""
    kinds: dict[str, int] = {}
    for fault in faults:
        kind = fault.rsplit(": ", 1)[1]
        kinds[kind] = kinds.get(kind, 0) + 1
    worst_first = sorted(faults, key=lambda fault: not fault.endswith(": " + WORST))
    return f"{len(faults)} of {sent} answers wrong ({seconds:.1f} s): {kinds}\n" + "\n".join(
        worst_first[:40]
    )


def test_no_answer_is_2xx_without_the_routes_key_and_nothing_changes(
    server: BillingServer, app_routes: list[Route]
) -> None:
    before = _state(server.port)
    assert [status for status, _ in before] == [200, 200, 404, 200, 200], before
    started = time.monotonic()
    sent, faults = _sweep(server.port, app_routes, lambda credential: credential != "right key")
    seconds = time.monotonic() - started
    print(f"{sent} requests without the right key in {seconds:.1f} s")
    assert not faults, _report(sent, faults, seconds)
    assert _state(server.port) == before


def test_the_right_key_reaches_its_route_by_every_accepted_spelling_only(
    server: BillingServer, app_routes: list[Route]
) -> None:
    started = time.monotonic()
    sent, faults = _sweep(server.port, app_routes, lambda credential: credential == "right key")
    seconds = time.monotonic() - started
    print(f"{sent} requests with the right key in {seconds:.1f} s")
    assert not faults, _report(sent, faults, seconds)


def test_options_is_answered_without_a_key_only_for_a_plain_path(
    server: BillingServer, app_routes: list[Route]
) -> None:
    """A browser's CORS preflight carries no key: Falcon's own responder answers it (no code of
    ours runs, no body). A target that is not a plain path is refused like any other."""
    connection = RawConnection(server.port)
    try:
        for route in app_routes:
            for form, spell, accepted in FORMS:
                target = spell(route.path, server.port)
                answer = connection.request("OPTIONS", target, {})
                where = f"OPTIONS {target} [{form}] -> {answer.status} {answer.body[:120]!r}"
                if accepted:
                    assert answer.status == 200 and answer.body == b"", where
                    assert set(answer.headers["allow"].split(", ")) >= route.methods, where
                else:
                    assert answer.status == 400, where
                    assert _error(answer) is not None, where
    finally:
        connection.close()
