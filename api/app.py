"""``create_app``: the Falcon app built from settings, keys and an injected ledger."""

import falcon

from api.auth import KeyAuth
from api.http import handle_ledger_error, respond, serialize_error
from api.metrics import Metrics, MetricsResource
from api.observe import RequestObserver, handle_unexpected_error
from api.openapi import openapi_document
from api.resources.admin import (
    CreditsResource,
    ProductsResource,
    ProvisionUserResource,
    ResetBudgetsResource,
    TenantsResource,
    UserResource,
)
from api.resources.gateway import CheckBudgetResource, LogUsageResource, ReleaseReservationResource
from api.resources.health import HealthResource
from api.resources.users import UserBudgetResource, UserUsageResource
from api.throttle import KeyRateLimit, handle_rate_limited
from core.errors import LedgerError, RateLimited
from core.ledger import Ledger
from core.provisioning import IdentityStore, Provisioner
from core.rate_limits import RateLimiter
from core.settings import Keys, Settings


class OpenApiResource:
    def __init__(self) -> None:
        self._document = openapi_document()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        respond(resp, self._document)


def create_app(
    settings: Settings,
    keys: Keys,
    ledger: Ledger,
    identities: IdentityStore | None = None,
    metrics: Metrics | None = None,
) -> falcon.App:
    """The app; ``identities`` (PocketBase, when configured) joins provisioning; ``metrics``
    defaults to a private registry (one process, as in tests)."""
    metrics = Metrics() if metrics is None else metrics
    limiter = RateLimiter.from_settings(
        settings, metrics.redis_failure, metrics.rate_limit_rejection
    )
    middleware: list[object] = [RequestObserver(metrics), KeyAuth(keys)]
    if settings.rate_limit is not None:
        middleware.append(KeyRateLimit(limiter))
    if settings.cors_origin_list:
        origins = settings.cors_origin_list
        middleware.insert(
            1,
            falcon.CORSMiddleware(
                allow_origins="*" if origins == ["*"] else origins,
                allow_credentials=None,
                expose_headers=None,
            ),
        )
    app = falcon.App(middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    app.set_error_serializer(serialize_error)
    app.add_error_handler(Exception, handle_unexpected_error)
    app.add_error_handler(LedgerError, handle_ledger_error)
    app.add_error_handler(RateLimited, handle_rate_limited)

    limit = settings.body_bytes_max
    metrics_key = settings.metrics_key.get_secret_value() if settings.metrics_key else None
    app.add_route("/", HealthResource(ledger.store, limiter))
    app.add_route("/openapi.json", OpenApiResource())
    app.add_route("/metrics", MetricsResource(metrics, ledger, metrics_key))
    app.add_route("/api/check-budget", CheckBudgetResource(ledger, limit, limiter, metrics))
    app.add_route("/api/log-usage", LogUsageResource(ledger, limit, limiter, metrics))
    app.add_route("/api/release-reservation", ReleaseReservationResource(ledger, limit))
    app.add_route("/api/users/{user_id}/budget", UserBudgetResource(ledger))
    app.add_route("/api/users/{user_id}/usage", UserUsageResource(ledger))
    app.add_route("/api/admin/reset-budgets", ResetBudgetsResource(ledger, limit))
    app.add_route(
        "/api/admin/provision-user", ProvisionUserResource(Provisioner(ledger, identities), limit)
    )
    app.add_route("/api/admin/products", ProductsResource(ledger, limit))
    app.add_route("/api/admin/tenants", TenantsResource(ledger, limit))
    app.add_route("/api/admin/users/{user_id}", UserResource(ledger, limit))
    app.add_route("/api/admin/users/{user_id}/credits", CreditsResource(ledger, limit))
    return app
