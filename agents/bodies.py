"""What a model call's body and headers may ask of the provider: the gateway forwards only what
runs on the model itself. Tools the provider runs (remote MCP, web fetch and search, code
execution), content it fetches by URL and state it keeps server side would let a sandbox reach
any address through the provider, outside its egress policy and its budget; kept state would
also be outside the audit trail, readable by any other holder of the key."""

from __future__ import annotations

import re

from agents.grants import Refusal
from agents.models import ApiStyle, ModelGrant

# Tools the caller runs itself. OpenAI: function and custom tools, and the ones OpenAI defines
# but the caller executes (apply_patch, local_shell, shell with a local environment; a shell
# without one may run in OpenAI's container). Anthropic: tools without a type (or `custom`)
# and the client tools Anthropic defines but the caller executes (bash, text editor, computer
# use, memory). Everything else (mcp, web_search*, file_search, code_interpreter,
# image_generation, computer_use*; web_fetch_*, code_execution_*, mcp_toolset, ...) runs on
# the provider's side.
_OPENAI_TOOLS = frozenset({"function", "custom", "apply_patch", "local_shell"})
_ANTHROPIC_CLIENT_TOOL = re.compile(r"(bash|text_editor|computer|memory)_\d{8}\Z")
# Body keys refused whatever their value: the provider connects to servers (`mcp_servers`),
# runs or reuses a container (`container`), runs the call later and keeps it (`background`),
# reads state kept on its side (`conversation`, stored `prompt`s, a stored response to
# continue: `previous_response_id`) or searches the web (`web_search_options`).
REFUSED_KEYS = frozenset(
    {
        "mcp_servers",
        "container",
        "background",
        "conversation",
        "prompt",
        "previous_response_id",
        "web_search_options",
    }
)
# Why, for the keys the general reason does not fit. Convoy sends `store: false`
# (call_body_pin), so no stored response is one this sandbox made: an id it knows came from
# another caller of the project's key, another campaign's perhaps.
_REFUSED_WHY = {
    "previous_response_id": "it continues a response the provider stored, and Convoy's calls "
    "are not stored (`store` is always false): send the conversation's items in `input`",
}
# The most completions one call may ask for (`n`): each is billed, and each is reserved.
MAX_CHOICES = 8
# Request headers passed to the provider; any other is dropped (organisation and project
# headers would bill another account, beta headers switch on server tools).
FORWARD_HEADERS = frozenset({"content-type", "accept", "anthropic-version", "user-agent"})
# anthropic-beta features passed on (others are dropped): output, thinking and caching options
# that change neither where the provider connects nor how a call is billed.
ANTHROPIC_BETAS = frozenset(
    {
        "claude-code",
        "interleaved-thinking",
        "fine-grained-tool-streaming",
        "token-efficient-tools",
        "prompt-caching",
        "output-128k",
        "context-management",
    }
)
_BETA = re.compile(r"([a-z0-9-]+?)-(\d{4}-\d{2}-\d{2}|\d{8})\Z")


def _refuse(grant: ModelGrant, kind: str, message: str) -> Refusal:
    return Refusal(403, kind, f"Convoy gateway: {message}", grant)


def _tool_allowed(api_style: str, tool) -> bool:
    if not isinstance(tool, dict):
        return False
    kind = tool.get("type")
    if api_style == ApiStyle.ANTHROPIC:
        return kind in (None, "custom") or (
            isinstance(kind, str) and bool(_ANTHROPIC_CLIENT_TOOL.match(kind))
        )
    if kind == "shell":
        environment = tool.get("environment")
        return isinstance(environment, dict) and environment.get("type") == "local"
    return kind in _OPENAI_TOOLS


def _fetched_url(node) -> str | None:
    """The URL a content block asks the provider to fetch, if it does: an image or a file by
    URL (data: URLs are content, not fetches)."""
    if not isinstance(node, dict):
        return None
    candidates = []
    image = node.get("image_url")
    candidates.append(image.get("url") if isinstance(image, dict) else image)
    candidates.append(node.get("file_url"))
    source = node.get("source")
    if isinstance(source, dict) and source.get("type") == "url":
        candidates.append(source.get("url") or "a URL")
    for value in candidates:
        if isinstance(value, str) and not value.lower().startswith("data:"):
            return value
    return None


def _stored_content(node) -> str | None:
    """What a content block or item reads from the provider's storage, if it does: a file or
    image by `file_id` (OpenAI's input_file and input_image, Chat Completions' `file`,
    Anthropic's `file` source), or a reasoning item without its `encrypted_content` (then its
    `id` names one the provider kept)."""
    if not isinstance(node, dict):
        return None
    if "file_id" in node:
        return "a file the provider stored (`file_id`)"
    if node.get("type") == "reasoning" and "encrypted_content" not in node:
        return "a reasoning item the provider stored (an `id` without `encrypted_content`)"
    return None


class _TooDeep(Exception):
    pass


def _content_walk(node, depth: int = 0):
    if depth > 64:  # no message is this deep; unwalked, it could hide a URL
        raise _TooDeep
    if isinstance(node, dict):
        yield node
        for key, value in node.items():
            if key not in ("input", "arguments"):  # a tool call's arguments are data
                yield from _content_walk(value, depth + 1)
    elif isinstance(node, list):
        for value in node:
            yield from _content_walk(value, depth + 1)


def _stored_item_reference(items) -> int | None:
    """The index of the first `input` item that only names a stored item by id (OpenAI's
    `item_reference`, whose `type` may be left out), if any."""
    if not isinstance(items, list):
        return None
    for i, item in enumerate(items):
        if isinstance(item, dict) and (
            item.get("type") == "item_reference" or ("type" not in item and item.keys() == {"id"})
        ):
            return i
    return None


def call_body_pin(*, api_style: str, endpoint: str, payload: dict) -> None:
    """What the gateway sets whatever the caller asked: OpenAI's `store` false. A stored
    response is kept by the provider under the project's key, outside the audit trail, and any
    other holder of the key can read or continue it. `/responses` stores unless told not to;
    `/chat/completions` only when asked, so there `store` is set only if the caller sent it
    (servers that copy OpenAI's API do not all accept the field)."""
    if api_style == ApiStyle.OPENAI and (endpoint == "/responses" or "store" in payload):
        payload["store"] = False


def call_choices(payload: dict) -> int:
    """How many completions the call asks for (`n`, 1 when not given)."""
    n = payload.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1


def call_body_check(*, grant: ModelGrant, payload: dict) -> None:
    """Refuse (Refusal, 403 or 400) a body that asks the provider to run tools, fetch URLs,
    keep state for the caller or read state it kept, or for more than MAX_CHOICES completions."""
    api_style = grant.provider.api_style
    refused = sorted(REFUSED_KEYS & payload.keys())
    if refused:
        why = _REFUSED_WHY.get(
            refused[0], "it makes the provider connect, run or keep things outside the sandbox"
        )
        raise _refuse(grant, "parameter_not_allowed", f"`{refused[0]}` is not allowed: {why}")
    reference = _stored_item_reference(payload.get("input"))
    if reference is not None:
        raise _refuse(
            grant,
            "parameter_not_allowed",
            f"`input[{reference}]` is not allowed: an item reference reads an item the provider "
            "stored, and Convoy's calls are not stored: send the item itself",
        )
    n = payload.get("n")
    if n is not None and (
        not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CHOICES
    ):
        raise Refusal(
            400,
            "invalid_request",
            f"Convoy gateway: `n` must be a whole number from 1 to {MAX_CHOICES} (got {n!r})",
            grant,
        )
    tools = payload.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise Refusal(400, "invalid_request", "Convoy gateway: `tools` must be a list", grant)
        for i, tool in enumerate(tools):
            if not _tool_allowed(api_style, tool):
                kind = tool.get("type") if isinstance(tool, dict) else None
                raise _refuse(
                    grant,
                    "tool_not_allowed",
                    f"tools[{i}] (type {kind!r}) runs on the provider's side; only tools the "
                    "agent runs itself are allowed "
                    + (
                        "(no type, custom, bash_*, text_editor_*, computer_*, memory_*)"
                        if api_style == ApiStyle.ANTHROPIC
                        else "(function, custom, apply_patch, local_shell, shell with a local "
                        "environment)"
                    ),
                )
    for key in ("messages", "input", "system", "instructions"):
        try:
            nodes = list(_content_walk(payload.get(key), 1))
        except _TooDeep:
            raise Refusal(
                400, "invalid_request", f"Convoy gateway: `{key}` is nested too deep", grant
            ) from None
        stored = next(filter(None, map(_stored_content, nodes)), None)
        if stored is not None:
            raise _refuse(
                grant,
                "parameter_not_allowed",
                f"`{key}` names {stored}, and Convoy's calls are not stored: send the content "
                "itself (a file or image inline, a reasoning item with its encrypted_content)",
            )
        url = next(filter(None, map(_fetched_url, nodes)), None)
        if url is not None:
            raise _refuse(
                grant,
                "url_not_allowed",
                f"`{key}` asks the provider to fetch {url[:200]!r}; send images and "
                "files inline (base64 or a data: URL)",
            )


def forward_headers(headers: list[tuple[str, str]], *, api_style: str) -> list[tuple[str, str]]:
    """The sandbox's request headers the provider may see: FORWARD_HEADERS, and for Anthropic
    the ANTHROPIC_BETAS values of `anthropic-beta`."""
    kept = [(k, v) for k, v in headers if k.lower() in FORWARD_HEADERS]
    if api_style == ApiStyle.ANTHROPIC:
        betas = []
        for name, value in headers:
            if name.lower() == "anthropic-beta":
                for beta in value.split(","):
                    match = _BETA.match(beta.strip())
                    if match and match.group(1) in ANTHROPIC_BETAS:
                        betas.append(beta.strip())
        if betas:
            kept.append(("anthropic-beta", ",".join(betas)))
    return kept
