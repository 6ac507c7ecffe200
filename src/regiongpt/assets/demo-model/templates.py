"""LLaVA-1.5's Vicuna v1 conversation template, and which characters the model learns.

    "<system> USER: <image>\\nq1 ASSISTANT: a1</s>USER: q2 ASSISTANT: a2</s>"

Only assistant replies (and their closing ``</s>``) are learned; everything else is context.
``CHAT_TEMPLATE`` is the same layout as a Jinja chat template for ``apply_chat_template``.

Kept free of package-relative imports beyond this folder so it can travel as remote code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
IMAGE_PLACEHOLDER = "<image>"
END_OF_TURN = "</s>"
USER, ASSISTANT = "USER", "ASSISTANT"

_ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass(frozen=True)
class FormattedConversation:
    text: str
    # [start, end) character spans of the text that the model learns (assistant replies + </s>).
    target_spans: tuple[tuple[int, int], ...]


def normalise_turns(turns: Sequence[dict]) -> list[tuple[str, str]]:
    """(role, text) pairs from LLaVA-style ``{"from", "value"}`` or chat ``{"role", "content"}`` turns."""
    out = []
    for i, turn in enumerate(turns):
        role = turn.get("role", turn.get("from"))
        text = turn.get("content", turn.get("value"))
        if role not in _ROLE_ALIASES:
            raise ValueError(f"turn {i}: unknown role {role!r}; use 'user'/'human' or 'assistant'/'gpt'")
        if isinstance(text, list):  # chat-style content parts
            parts = []
            for part in text:
                if part.get("type") == "image":
                    parts.append(IMAGE_PLACEHOLDER + "\n")
                elif part.get("type") == "text":
                    parts.append(part["text"])
            text = "".join(parts)
        if not isinstance(text, str):
            raise ValueError(f"turn {i}: content must be text")
        out.append((_ROLE_ALIASES[role], text))
    return out


def format_conversation(
    turns: Sequence[dict], system_prompt: str | None = SYSTEM_PROMPT, add_generation_prompt: bool = False
) -> FormattedConversation:
    """Lay out a conversation in the Vicuna v1 template and mark the assistant spans.

    With ``add_generation_prompt`` the text ends with "ASSISTANT:" for the model to continue.
    """
    pairs = normalise_turns(turns)
    if pairs and pairs[0][0] == "system":
        system_prompt = pairs[0][1]
        pairs = pairs[1:]
    text = f"{system_prompt} " if system_prompt else ""
    spans = []
    for role, content in pairs:
        if role == "system":
            raise ValueError("a system message may only come first")
        if role == "user":
            text += f"{USER}: {content} "
        else:
            text += f"{ASSISTANT}: "
            start = len(text)
            text += content + END_OF_TURN
            spans.append((start, len(text)))
    if add_generation_prompt:
        text += f"{ASSISTANT}:"
    return FormattedConversation(text=text, target_spans=tuple(spans))


def chat_template(system_prompt: str | None = SYSTEM_PROMPT) -> str:
    """The layout of :func:`format_conversation` as a Jinja chat template (tested to match)."""
    default = (system_prompt or "").replace("\\", "\\\\").replace("'", "\\'")
    return (
        "{% if messages and messages[0]['role'] == 'system' %}"
        "{% set system = messages[0]['content'] %}{% set messages = messages[1:] %}"
        "{% else %}{% set system = '" + default + "' %}{% endif %}" + _TEMPLATE_BODY
    )


_TEMPLATE_BODY = (
    "{% if system %}{{ system }} {% endif %}"
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set content = message['content'] %}"
    "{% else %}{% set content = namespace(t='') %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{% set content.t = content.t + '<image>\n' %}"
    "{% elif part['type'] == 'text' %}{% set content.t = content.t + part['text'] %}{% endif %}"
    "{% endfor %}{% set content = content.t %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ 'USER: ' + content + ' ' }}"
    "{% else %}{{ 'ASSISTANT: ' + content + '</s>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

CHAT_TEMPLATE = chat_template(SYSTEM_PROMPT)
