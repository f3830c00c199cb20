"""One chat turn with MCP tools: the model may call tools, each call is run, shown and answered, then it answers.

The transcript shows every call and its outcome on a line of its own::

    [tool call] get_weather({"city": "Paris"})
    [tool result] get_weather: Weather in Paris: sunny, 21 C
    The weather in Paris is sunny.

A bad call (a tool not offered, arguments that do not fit its schema), a tool that raises and one that times out
are shown the same way (``[tool bad call]``, ``[tool error]``, ``[tool timeout]``), told to the model, and the
turn goes on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..client import Conversation, StreamStats, stream_tool_round, user_message
from ..errors import ConfigError, MixVLLMError
from .toolbox import Toolbox

TOOL_CHOICES = ("auto", "required", "none")
# Rounds of tool calls in one turn before the model must answer in words (a model that keeps calling stops).
MAX_ROUNDS = 4
CHOICE_HELP = ("auto: the model decides (the server needs --enable-auto-tool-choice); required: it must call a "
               "tool first; none: no calls; NAME: it must call that tool first")


def _compact(arguments: str) -> str:
    """Return a call's arguments on one line: compact JSON (models may write it indented), else as written."""
    try:
        return json.dumps(json.loads(arguments), ensure_ascii=False)
    except ValueError:
        return " ".join(arguments.split())


def mcp_arguments() -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """Return ``(flags, add_argument keywords)`` of ``--enable-mcp``, ``--mcp-config``, ``--tool-choice``: the same
    in ``mixvllm-chat`` and ``%vllm_chat``."""
    return [
        (("--enable-mcp",), {"action": "store_true",
                             "help": "offer the tools of the MCP servers in --mcp-config to the model"}),
        (("--mcp-config",), {"metavar": "FILE", "default": None,
                             "help": "YAML (mcp_servers: {NAME: {command, args, env} or {url}}) or JSON "
                                     "({\"mcpServers\": ...}) file of MCP servers; implies --enable-mcp"}),
        (("--tool-choice",), {"default": "auto", "metavar": "CHOICE", "help": CHOICE_HELP + " (default: auto)"}),
    ]


class ToolChoiceError(MixVLLMError):
    """The server cannot honour the tool choice asked for; the message says how to serve or chat instead."""


def tool_choice_value(choice: str, toolbox: Toolbox) -> Any:
    """Return the request's ``tool_choice`` for ``auto``, ``required``, ``none`` or a tool's name; else ConfigError."""
    if choice in TOOL_CHOICES:
        return choice
    if choice in toolbox.tools:
        return {"type": "function", "function": {"name": choice}}
    raise ConfigError(f"--tool-choice {choice!r}: allowed: auto, required, none, or one of the tools: "
                      f"{', '.join(toolbox.tools) or 'none offered'}")


def tool_chat_turn(client: Any, model: str, conversation: Conversation, text: str, toolbox: Toolbox, *,
                   tool_choice: str = "auto", max_rounds: int = MAX_ROUNDS,
                   images: list[str | bytes | Path] | None = None, stats: StreamStats | None = None,
                   **params: Any) -> Iterator[str]:
    """Send one user turn with the toolbox's tools offered; yield the transcript (answer text, tool lines).

    ``tool_choice`` applies to the first request; after a forced call (``required`` or a name) the model answers
    with calls off, after ``auto`` it may call again, up to ``max_rounds`` rounds. Every message (the calls, the
    ``tool`` results, the answer) is recorded in ``conversation``.
    """
    choice = tool_choice_value(tool_choice, toolbox)
    tools = toolbox.openai_tools()
    start = len(conversation.messages)
    conversation.messages.append(user_message(text, images))
    for round_ in range(max_rounds + 1):
        calls: list[dict[str, Any]] = []
        pieces: list[str] = []
        try:
            for piece in stream_tool_round(client, model, conversation.request_messages(), tools,
                                           "none" if round_ == max_rounds else choice, calls, stats=stats, **params):
                pieces.append(piece)
                yield piece
        except BaseException as exc:
            if pieces:
                conversation.messages.append({"role": "assistant", "content": "".join(pieces)})
            elif len(conversation.messages) == start + 1:
                conversation.messages.pop()  # nothing came back: forget the question too
            if "tool choice requires" in str(exc) or "requires --tool-call-parser" in str(exc):
                raise ToolChoiceError(
                    "the server was started without automatic tool choice: serve it with --enable-auto-tool-choice "
                    "(tools.enable_auto_tool_choice: true), or chat with --tool-choice required or a tool's name"
                ) from None
            raise
        answer = "".join(pieces)
        if not calls:
            conversation.messages.append({"role": "assistant", "content": answer})
            return
        # content "" rather than None: simple chat templates (SmolLM2's) concatenate it as a string.
        conversation.messages.append({"role": "assistant", "content": answer, "tool_calls": calls})
        if answer and not answer.endswith("\n"):
            yield "\n"
        for call in calls:
            function = call["function"]
            yield f"[tool call] {function['name']}({_compact(function['arguments'])})\n"
            outcome = toolbox.call(function["name"], function["arguments"])
            yield outcome.line() + "\n"
            conversation.messages.append({"role": "tool", "tool_call_id": call["id"], "content": outcome.for_model()})
        choice = "auto" if tool_choice == "auto" else "none"
