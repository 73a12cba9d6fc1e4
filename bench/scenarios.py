"""What the bench measures: each scenario's request, the servers, the loads and database sizes."""

from dataclasses import dataclass

# The keys both servers are started with and every request carries.
API_KEY = "bench-api-key-0123456789abcdef"
ADMIN_KEY = "bench-admin-key-0123456789abcdef"

SMALL_USERS = 1_000
LARGE_USERS = 1_000_000
LARGE_USAGE_ROWS = 10_000_000

# (connections, wrk threads): throughput under load, and the latency of one request at a time.
LOADS = ((32, 2), (1, 1))


# Every scenario's body is written once, here: wrk fills it in (``lua/post.lua``) and so does
# ``bench.instructions``. Slots: "{user}" (a seeded user, picked uniformly) and "{request_id}"
# (unique per request).
CHECK_BODY = (
    '{"user_id":"{user}","model":"gpt-4o","tokens_input":100,"tokens_output":100,'
    '"cost_estimate":0.001}'
)


@dataclass(frozen=True)
class Scenario:
    name: str
    label: str
    path: str
    target: str  # "service" or "bare"
    body: str  # a template: see CHECK_BODY

    def fill(self, user: str, request_id: str) -> bytes:
        """The body with its slots filled in, as ``lua/post.lua`` fills them."""
        return self.body.replace("{user}", user).replace("{request_id}", request_id).encode()


SCENARIOS = (
    # The bare app reads and discards a body the size of a check's.
    Scenario("bare", "bare Falcon (reference)", "/bare", "bare", CHECK_BODY),
    Scenario("check_budget", "check-budget", "/api/check-budget", "service", CHECK_BODY),
    Scenario(
        "check_reserve",
        "check-budget + reservation",
        "/api/check-budget",
        "service",
        CHECK_BODY.removesuffix("}") + ',"request_id":"{request_id}"}',
    ),
    Scenario(
        "log_usage",
        "log-usage",
        "/api/log-usage",
        "service",
        '{"user_id":"{user}","model":"gpt-4o","request_id":"{request_id}","tokens_input":100,'
        '"tokens_output":100,"cost_total":0.001,"response_time":850}',
    ),
)


@dataclass(frozen=True)
class Variant:
    """One configuration of ``billing serve`` under test."""

    database: str  # "sqlite" or "postgres"
    workers: int

    @property
    def label(self) -> str:
        return f"{self.database} ×{self.workers}"


def variants(databases: list[str], workers: list[int]) -> list[Variant]:
    """Every (database, workers) pair, each a server of its own."""
    return [Variant(database, count) for database in databases for count in workers]
