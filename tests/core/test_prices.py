"""Model prices: the bundled table prices exactly, prefixes resolve, an override file wins."""

from decimal import Decimal

import pytest

from core.prices import ModelPrice, load_price_table


@pytest.fixture(scope="module")
def bundled():
    return load_price_table()


def test_gpt_4o_is_priced_exactly(bundled):
    assert bundled.price("gpt-4o") == ModelPrice(Decimal("0.0000025"), Decimal("0.00001"))
    assert bundled.cost("gpt-4o", 10, 20) == 225_000  # $0.000225


def test_prices_are_decimals_not_floats(bundled):
    found = bundled.price("gpt-4o")
    assert isinstance(found.input_per_token, Decimal)
    assert isinstance(found.output_per_token, Decimal)


def test_a_million_tokens_costs_the_list_price(bundled):
    assert bundled.cost("gpt-4o", 1_000_000, 0) == 2_500_000_000
    assert bundled.cost("gpt-4o", 0, 1_000_000) == 10_000_000_000


def test_zero_tokens_cost_zero(bundled):
    assert bundled.cost("gpt-4o", 0, 0) == 0


def test_provider_prefix_is_stripped(bundled):
    assert bundled.price("openai/gpt-4o") == bundled.price("gpt-4o")
    assert bundled.cost("openai/gpt-4o", 10, 20) == 225_000


def test_unknown_model_is_none(bundled):
    assert bundled.price("no-such-model") is None
    assert bundled.price("openai/no-such-model") is None
    assert bundled.cost("no-such-model", 10, 20) is None


def test_override_file_takes_precedence_and_skips_unpriced_entries(tmp_path):
    override = tmp_path / "prices.json"
    override.write_text(
        """{
          "sample_spec": {"input_cost_per_token": "0.0", "output_cost_per_token": "0.0",
                          "litellm_provider": "one of https://docs.litellm.ai/docs/providers"},
          "gpt-4o": {"input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002,
                     "litellm_provider": "openai", "mode": "chat"},
          "my-local-model": {"input_cost_per_token": 0, "output_cost_per_token": 1e-7,
                             "mode": "chat"},
          "image-model": {"output_cost_per_image": 0.04, "mode": "image_generation"},
          "half-priced": {"input_cost_per_token": 0.000001},
          "negative": {"input_cost_per_token": -0.000001, "output_cost_per_token": 0.000001},
          "boolean": {"input_cost_per_token": true, "output_cost_per_token": true},
          "not-an-object": 5
        }""",
        encoding="utf-8",
    )
    table = load_price_table(override)
    assert table.price("gpt-4o") == ModelPrice(Decimal("0.000001"), Decimal("0.000002"))
    assert table.cost("gpt-4o", 10, 20) == 50_000
    assert table.cost("openai/gpt-4o", 10, 20) == 50_000
    assert table.cost("my-local-model", 1000, 1000) == 100_000
    for skipped in (
        "sample_spec",
        "image-model",
        "half-priced",
        "negative",
        "boolean",
        "not-an-object",
    ):
        assert table.price(skipped) is None, skipped
    # models only in the bundled table are still there
    assert table.price("gpt-4o-mini") == load_price_table().price("gpt-4o-mini")


def test_override_must_be_a_json_object(tmp_path):
    override = tmp_path / "prices.json"
    override.write_text("[1, 2, 3]", encoding="utf-8")
    with pytest.raises(ValueError):
        load_price_table(override)
