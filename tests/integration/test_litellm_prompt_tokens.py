"""``client.prompt_tokens``'s bound is never below LiteLLM's own count, for LiteLLM's real
tokenizers (tiktoken's o200k and cl100k, the Anthropic tokenizer LiteLLM bundles), run in the
proxy's virtualenv: a hold of the bound is never short of what the prompt will cost."""

import json
import subprocess

from litellm_support import LITELLM_BIN, REPO, require_litellm

CHECK_TIMEOUT_SECONDS = 240
MODELS = ["gpt-4o", "gpt-4", "gpt-3.5-turbo-0301", "claude-3-5-sonnet-20240620", "no-such-model"]
TEXTS = [
    "hi",
    "a",
    " ",
    "Hello, world! How are you today?",
    "héllo wörld ñ ç",
    "日本語のテキストです。中文文本。한국어 텍스트",
    "🙂🚀👩‍👩‍👧‍👦 emoji 🇫🇷",
    "    \n\n\t\t    spaced   out   ",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "0123456789 3.14159 1e-9 0xdeadbeef",
    "def f(x):\n    return {'k': [x, x ** 2]}  # code\n",
    "<|endoftext|> <|im_start|> special-looking text",
    "\u0000\u0001\u200b\ufeff control and zero-width",
]
CHECK = """
import json, sys
import litellm
from client.prompt_tokens import chat_tokens_max, text_tokens_max

models, texts = json.load(sys.stdin)
below = []
for model in models:
    for text in texts:
        chats = [
            [{"role": "user", "content": text}],
            [{"role": "system", "content": text}, {"role": "user", "content": text, "name": "ada"}],
            [{"role": "user", "content": [{"type": "text", "text": text}, text]}],
        ]
        for messages in chats:
            counted = litellm.token_counter(model=model, messages=messages)
            if chat_tokens_max(messages) < counted:
                below.append([model, messages, chat_tokens_max(messages), counted])
        counted = litellm.token_counter(model=model, text=text)
        if text_tokens_max(text) < counted:
            below.append([model, text, text_tokens_max(text), counted])
print(json.dumps(below))
"""


def test_the_bound_is_never_below_litellms_count() -> None:
    require_litellm()
    python = LITELLM_BIN.parent / "python"
    finished = subprocess.run(
        [str(python), "-c", CHECK],
        input=json.dumps([MODELS, TEXTS]),
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        timeout=CHECK_TIMEOUT_SECONDS,
        check=True,
    )
    assert json.loads(finished.stdout.splitlines()[-1]) == []
