"""Prompt formatting with the tokenizer's own chat template."""

from __future__ import annotations

from typing import Dict, List, Optional


def render_prompt(tokenizer, messages: List[Dict[str, str]], system_prompt: Optional[str]) -> str:
    """Chat messages (after a system turn when ``system_prompt`` is non-empty) in the tokenizer's chat template,
    ready for generation."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(f"model: tokenizer {name!r} has no chat template; use an instruct/chat model")
    turns = [{"role": "system", "content": system_prompt}] if system_prompt and system_prompt.strip() else []
    text = tokenizer.apply_chat_template(turns + list(messages), tokenize=False, add_generation_prompt=True)
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template returned {type(text).__name__}, expected str")
    return text


def format_prompt(tokenizer, question: str, system_prompt: Optional[str]) -> str:
    """``question`` as a user turn (after a system turn when ``system_prompt`` is non-empty), ready for generation."""
    return render_prompt(tokenizer, [{"role": "user", "content": question}], system_prompt)
