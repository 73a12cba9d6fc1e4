"""A stand-in for a LiteLLM proxy's spend-log endpoints, for the reconcile flow's tests.

LiteLLM is a paid-service proxy that keeps its spend logs in its own database, which cannot be
set up here, so it is faked at its HTTP boundary: a local http.server answering as LiteLLM
1.106.12's source does (``proxy/spend_tracking/spend_management_endpoints.py``):

- ``GET /spend/logs/v2``: the rows whose ``startTime`` lies in ``[start_date, end_date]``
  (``YYYY-MM-DD`` or ``YYYY-MM-DD HH:MM:SS``, UTC, both ends included), sorted by
  ``sort_by``/``sort_order``, one ``page`` of ``page_size`` (1 to 1,000) at a time, as
  ``{"data", "total", "page", "page_size", "total_pages", "total_is_capped"}`` with ``total``
  capped at 10,000. Absent (404) when ``has_v2`` is False, as on older proxies.
- ``GET /spend/logs`` with ``summarize=false``: a JSON list of the rows of the day
  ``start_date``, newest first, at most 10,000.

Both want ``Authorization: Bearer <LITELLM_KEY>``.
"""

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from ports import free_port

LITELLM_KEY = "sk-litellm-admin-key-for-tests"
ROWS_PER_RESPONSE_MAX = 10_000  # LiteLLM's cap on /spend/logs, and on v2's "total"
PAGE_SIZE_MAX = 1_000


def spend_row(request_id: str, call_id: str, start_time: str, spend: float) -> dict:
    """A successful call's spend-log row for user ``ann``, as LiteLLM lists it (10 + 20 tokens
    of gpt-4o; ``spend`` a binary float, as LiteLLM records it)."""
    return {
        "request_id": request_id,
        "litellm_call_id": call_id,
        "end_user": "ann",
        "model_group": "gpt-4o",
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "spend": spend,
        "status": "success",
        "startTime": start_time,
    }


def _instant(text: str) -> datetime:
    """A v2 query date, or a row's ISO ``startTime``, as an aware UTC datetime."""
    for form in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            return datetime.strptime(text, form).replace(tzinfo=UTC)
        except ValueError:
            continue
    return datetime.fromisoformat(text)


class FakeLiteLLM:
    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.has_v2 = True
        self.queries: list[tuple[str, dict[str, list[str]]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                url = urlparse(self.path)
                if self.headers.get("Authorization") != f"Bearer {LITELLM_KEY}":
                    self._answer(401, {"error": "unauthorized"})
                    return
                query = parse_qs(url.query)
                fake.queries.append((url.path, query))
                if url.path == "/spend/logs/v2" and fake.has_v2:
                    self._answer(*fake.page(query))
                elif url.path == "/spend/logs":
                    self._answer(200, fake.day(query["start_date"][0]))
                else:
                    self._answer(404, {"detail": "Not Found"})

            def _answer(self, status: int, body: object) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps(body).encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def page(self, query: dict[str, list[str]]) -> tuple[int, object]:
        page = int(query.get("page", ["1"])[0])
        page_size = int(query.get("page_size", ["50"])[0])
        if not (page >= 1 and 1 <= page_size <= PAGE_SIZE_MAX):
            return 422, {"detail": "page or page_size out of range"}
        start, end = _instant(query["start_date"][0]), _instant(query["end_date"][0])
        matching = [row for row in self.rows if start <= _instant(row["startTime"]) <= end]
        key = query.get("sort_by", ["startTime"])[0]
        descending = query.get("sort_order", ["desc"])[0] == "desc"
        matching.sort(key=lambda row: _instant(row[key]) if key == "startTime" else row[key])
        if descending:
            matching.reverse()
        total = min(len(matching), ROWS_PER_RESPONSE_MAX)
        data = matching[(page - 1) * page_size : page * page_size]
        return 200, {
            "data": data,
            "total": total,
            "page": page,
            "page_size": page_size,
            "total_pages": (total + page_size - 1) // page_size,
            "total_is_capped": len(matching) > ROWS_PER_RESPONSE_MAX,
        }

    def day(self, day: str) -> list[dict]:
        rows = [row for row in self.rows if row["startTime"].startswith(day)]
        rows.sort(key=lambda row: _instant(row["startTime"]), reverse=True)
        return rows[:ROWS_PER_RESPONSE_MAX]


@contextmanager
def fake_litellm() -> Iterator[FakeLiteLLM]:
    fake = FakeLiteLLM()
    threading.Thread(target=fake.server.serve_forever, daemon=True).start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()
