"""LiteLLM's own budget without its database, for ``bench.gateway``: a ``custom_auth`` that
answers every request with one in-process key carrying a per-model budget, checked and counted by
the proxy's ``model_max_budget`` limiter in memory (its database budgets need Prisma engines that
cannot be installed here). Loaded by the proxy, not by the bench."""

from litellm.proxy._types import UserAPIKeyAuth

KEY_BUDGET_DOLLARS = 1_000_000
KEY_TOKEN = "bench-gateway-key-budget"


async def user_api_key_auth(request: object, api_key: str) -> UserAPIKeyAuth:
    return UserAPIKeyAuth(
        api_key=api_key,
        token=KEY_TOKEN,
        max_budget=KEY_BUDGET_DOLLARS,
        model_max_budget={"gpt-4o": {"budget_limit": KEY_BUDGET_DOLLARS, "time_period": "30d"}},
    )
