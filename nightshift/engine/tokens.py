"""Prompt token counting with the model's own tokenizer and chat template (for validation)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from nightshift.core.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, Endpoint
from nightshift.core.validation import TokenCounter


@lru_cache(maxsize=8)
def _tokenizer(model_path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def build_token_counter(model_path: str) -> TokenCounter:
    """A ``TokenCounter`` that counts prompts as the engine will see them."""
    tok = _tokenizer(model_path)

    def count(endpoint: Endpoint, body: dict[str, Any]) -> int:
        if endpoint is Endpoint.CHAT_COMPLETIONS:
            req = ChatCompletionRequest.model_validate(body)
            messages = [{"role": m.role, "content": m.text()} for m in req.messages]
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
                ids = ids["input_ids"]
            return len(ids)
        if endpoint is Endpoint.COMPLETIONS:
            return len(tok(CompletionRequest.model_validate(body).prompt)["input_ids"])
        return max(len(tok(t)["input_ids"]) for t in EmbeddingRequest.model_validate(body).inputs())

    return count
