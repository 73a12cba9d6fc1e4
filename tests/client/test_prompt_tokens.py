"""``client.prompt_tokens``: short plain text is bounded by its bytes; anything else is counted.

That the bound is never below LiteLLM's own count is checked against LiteLLM's tokenizers in
``tests/integration/test_litellm_prompt_tokens.py``.
"""

import pytest

from client.prompt_tokens import (
    MESSAGE_TOKENS_EXTRA,
    PROMPT_BYTES_BOUNDED_MAX,
    REPLY_TOKENS_EXTRA,
    STRING_TOKENS_EXTRA,
    chat_tokens_max,
    text_tokens_max,
)


def chat_bound(bytes_total: int, strings: int, messages: int) -> int:
    return (
        bytes_total
        + STRING_TOKENS_EXTRA * strings
        + MESSAGE_TOKENS_EXTRA * messages
        + REPLY_TOKENS_EXTRA
    )


def test_a_chat_is_bounded_by_the_bytes_of_every_string_in_it() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "héllo 日本", "name": "ada"},
    ]
    bytes_total = len("system") + len("Be brief.") + len("user") + 13 + len("ada")
    assert chat_tokens_max(messages) == chat_bound(bytes_total, 5, 2)


def test_text_parts_count_like_strings_and_none_values_not_at_all() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}, "there"], "name": None}
    ]
    assert chat_tokens_max(messages) == chat_bound(4 + 2 + 5, 3, 1)


@pytest.mark.parametrize(
    "message",
    [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
        {"role": "user", "content": [{"type": "text", "text": 7}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
        {"role": "user", "content": {"text": "a dict"}},
        "not a message",
    ],
)
def test_anything_but_plain_text_is_left_to_the_tokenizer(message: object) -> None:
    assert chat_tokens_max([{"role": "user", "content": "hi"}, message]) is None


def test_past_the_byte_bound_the_prompt_is_tokenized() -> None:
    fits = "a" * (PROMPT_BYTES_BOUNDED_MAX - len("user"))
    assert chat_tokens_max([{"role": "user", "content": fits}]) is not None
    assert chat_tokens_max([{"role": "user", "content": fits + "a"}]) is None
    two_byte_letters = "é" * (PROMPT_BYTES_BOUNDED_MAX // 2)  # as many characters as fit
    assert chat_tokens_max([{"content": two_byte_letters}]) is not None
    assert chat_tokens_max([{"content": two_byte_letters + "é"}]) is None


@pytest.mark.parametrize("messages", [[], "hello", None])
def test_no_messages_list_no_bound(messages: object) -> None:
    assert chat_tokens_max(messages) is None


def test_a_completion_prompt_is_bounded_by_its_bytes() -> None:
    assert text_tokens_max("héllo") == 6 + STRING_TOKENS_EXTRA
    assert text_tokens_max(["ab", "c"]) == 3 + 2 * STRING_TOKENS_EXTRA
    assert text_tokens_max([1, 2, 3]) is None  # token ids: LiteLLM's own rule applies
    assert text_tokens_max("a" * (PROMPT_BYTES_BOUNDED_MAX + 1)) is None


def test_a_lone_surrogate_counts_as_the_three_bytes_it_is_sent_as() -> None:
    assert text_tokens_max("\ud800") == 3 + STRING_TOKENS_EXTRA
