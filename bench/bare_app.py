"""The reference for the benchmark: a bare Falcon endpoint on the service's own waitress settings.

It does what every request to the service must do at the least — waitress parses the request,
Falcon routes it, the body is read — and nothing else: no auth, no validation, no database.
Served through ``service.server.run_waitress`` with ``Settings()`` (``PORT``, ``HOST``,
``THREADS`` from the environment, as for ``billing serve``), so threads and limits are the
service's, and pinned to the CPU the service's first worker gets when ``PIN_WORKERS_TO_CPUS`` is
on.

    PORT=3100 THREADS=8 python -m bench.bare_app
"""

import logging

import falcon

from core.settings import Settings
from service.cpus import pin_to_cpu, worker_cpu
from service.server import run_waitress

# About the size of a check-budget answer, so the reference writes a comparable response.
BODY = (
    b'{"allowed":true,"budget":{"total":1000000000,"used":0.123,"remaining":999999999.877},'
    b'"status":"active","message":"OK"}'
)


class BareResource:
    """Reads and discards the request body; answers a fixed small JSON body."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.bounded_stream.read()
        resp.content_type = falcon.MEDIA_JSON
        resp.data = BODY

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = BODY


def create_bare_app() -> falcon.App:
    app = falcon.App()
    resource = BareResource()
    app.add_route("/", resource)
    app.add_route("/bare", resource)
    return app


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings()
    cpu = worker_cpu(0) if settings.pin_workers_to_cpus else None
    if cpu is not None:
        pin_to_cpu(cpu)
    logging.getLogger("bench.bare_app").info(
        "bare reference app listening on %s:%d (threads=%d, cpu=%s)",
        settings.host,
        settings.port,
        settings.threads,
        "any" if cpu is None else cpu,
    )
    run_waitress(create_bare_app(), settings)


if __name__ == "__main__":
    main()
