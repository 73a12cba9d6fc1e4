"""Model prices: per-token input and output prices, to estimate or price a call exactly.

The table uses LiteLLM's ``model_prices_and_context_window.json`` format. The bundled one covers
common models; a file of that format given by ``MODEL_PRICES_PATH`` is laid over it. Prices are
parsed as decimals, never floats, so ``tokens × price`` is exact before the money rounding.
"""

from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path

import simplejson

from core.money import Money, money_from_decimal

PRICES_FILE_BYTES_MAX = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ModelPrice:
    input_per_token: Decimal
    output_per_token: Decimal


class PriceTable:
    """Look up a model's price by its name, with or without a ``provider/`` prefix."""

    def __init__(self, prices: dict[str, ModelPrice]) -> None:
        self._prices = prices

    def price(self, model: str) -> ModelPrice | None:
        found = self._prices.get(model)
        if found is None and "/" in model:
            found = self._prices.get(model.split("/", 1)[1])
        return found

    def cost(self, model: str, tokens_input: int, tokens_output: int) -> Money | None:
        """The exact cost of a call, rounded by the money rule; ``None`` for an unknown model."""
        assert tokens_input >= 0 and tokens_output >= 0
        found = self.price(model)
        if found is None:
            return None
        return money_from_decimal(
            found.input_per_token * tokens_input + found.output_per_token * tokens_output
        )


def _is_price(value: object) -> bool:
    return isinstance(value, (int, Decimal)) and not isinstance(value, bool) and value >= 0


def _parse(text: str) -> dict[str, ModelPrice]:
    table = simplejson.loads(text, use_decimal=True)
    if not isinstance(table, dict):
        raise ValueError("a price file must hold a JSON object keyed by model name")
    prices = {}
    for model, entry in table.items():
        if not isinstance(entry, dict):
            continue
        input_price = entry.get("input_cost_per_token")
        output_price = entry.get("output_cost_per_token")
        if _is_price(input_price) and _is_price(output_price):
            prices[model] = ModelPrice(Decimal(input_price), Decimal(output_price))
    return prices


def load_price_table(override_path: Path | None = None) -> PriceTable:
    """The bundled table, with the entries of ``override_path`` (if any) taking precedence."""
    bundled = resources.files("core").joinpath("data/model_prices.json").read_text("utf-8")
    prices = _parse(bundled)
    if override_path is not None:
        if override_path.stat().st_size > PRICES_FILE_BYTES_MAX:
            raise ValueError(f"{override_path} is larger than {PRICES_FILE_BYTES_MAX} bytes")
        prices.update(_parse(override_path.read_text("utf-8")))
    return PriceTable(prices)
