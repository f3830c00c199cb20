"""Talk to a server the way a user would: an ``openai`` client, streamed chat and completions,
image parts for vision models, and structured output (a JSON schema, a choice, a regex, a grammar)
parsed into a value. openai is imported when first used, never at load time."""

from __future__ import annotations

import base64
import mimetypes
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .structured import OutputFormat, StructuredOutputError, output_format

__all__ = ["OutputFormat", "StructuredOutputError", "output_format"]  # structured output, re-exported

# Parameters the openai client does not know as keywords: they travel in the request body.
_EXTRA_BODY_PARAMS = {"top_k"}


def openai_client(base_url: str, api_key: str, *, timeout: float = 600.0) -> Any:
    """Return an ``openai.OpenAI`` client for a server's ``/v1`` API."""
    from openai import OpenAI

    return OpenAI(base_url=f"{base_url.rstrip('/')}/v1", api_key=api_key or "EMPTY", timeout=timeout)


def request_params(params: dict[str, Any]) -> dict[str, Any]:
    """Return keyword arguments for the openai client: unset values dropped (the server's
    generation defaults then apply), vLLM-only ones moved into ``extra_body``."""
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = dict(params.get("extra_body") or {})
    params = {k: v for k, v in params.items() if k != "extra_body"}
    for key, value in params.items():
        if value is None:
            continue
        (extra if key in _EXTRA_BODY_PARAMS else kwargs)[key] = value
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


def image_url_part(source: str | bytes | Path, mime: str | None = None) -> dict[str, Any]:
    """Return an OpenAI ``image_url`` content part: URLs as they are, files and bytes as
    base64 data URLs."""
    if isinstance(source, str) and source.startswith(("http://", "https://", "data:")):
        return {"type": "image_url", "image_url": {"url": source}}
    if isinstance(source, bytes):
        data, mime = source, mime or _sniff_mime(source)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise ValueError(f"image {str(source)!r}: no such file; give a file path, an http(s) URL or bytes")
        data = path.read_bytes()
        mime = mime or mimetypes.guess_type(path.name)[0] or _sniff_mime(data)
    encoded = base64.b64encode(data).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{encoded}"}}


def _sniff_mime(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def user_message(text: str, images: list[str | bytes | Path] | None = None) -> dict[str, Any]:
    """Return a user message; with images, a list of text and image_url parts."""
    if not images:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [{"type": "text", "text": text}, *map(image_url_part, images)]}


@dataclass
class Conversation:
    """A chat history with an optional system prompt, remembered between turns."""

    system: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)

    def request_messages(self) -> list[dict[str, Any]]:
        """Return the system prompt (if any) followed by the history."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages


@dataclass
class StreamStats:
    """What a streamed answer cost: token usage (when the server reports it) and timings."""

    usage: dict[str, int] | None = None
    pieces: int = 0
    finish_reason: str | None = None  # "stop", or "length" when the answer ran to max_tokens
    first_piece_s: float | None = None
    elapsed_s: float = 0.0

    def summary(self) -> str:
        """Return one line such as ``7 tokens (12 prompt) in 0.42 s, first after 80 ms, 17 tokens/s``."""
        tokens = self.usage["completion_tokens"] if self.usage else self.pieces
        unit = "tokens" if self.usage else "pieces"
        parts = [f"{tokens} {unit}" + (f" ({self.usage['prompt_tokens']} prompt)" if self.usage else "")
                 + f" in {self.elapsed_s:.2f} s"]
        if self.first_piece_s is not None:
            parts.append(f"first after {self.first_piece_s * 1000:.0f} ms")
        if self.elapsed_s > 0 and tokens:
            parts.append(f"{tokens / self.elapsed_s:.1f} {unit}/s")
        return ", ".join(parts)


@dataclass
class Reply:
    """A finished answer: its text, what it cost (``stats``), and with structured output its parsed ``value``."""

    text: str
    stats: StreamStats
    value: Any = None

    @property
    def finish_reason(self) -> str | None:
        """Why the answer ended: ``stop``, or ``length`` when it ran to max_tokens."""
        return self.stats.finish_reason

    @property
    def usage(self) -> dict[str, int] | None:
        """Prompt, completion and total tokens, as the server counted them (None if it did not say)."""
        return self.stats.usage

    def __str__(self) -> str:
        return self.text


def _stream(stream: Any, text_of: Any, stats: StreamStats, started: float) -> Iterator[str]:
    try:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                stats.finish_reason = chunk.choices[0].finish_reason
            if chunk.choices and (piece := text_of(chunk.choices[0])):
                if stats.first_piece_s is None:
                    stats.first_piece_s = time.perf_counter() - started
                stats.pieces += 1
                yield piece
            if getattr(chunk, "usage", None):  # the last chunk, when the server reports usage
                stats.usage = {k: getattr(chunk.usage, k) for k in ("prompt_tokens", "completion_tokens",
                                                                   "total_tokens")}
    finally:
        stats.elapsed_s = time.perf_counter() - started
        stream.close()  # a consumer that stops early aborts the request on the server


def stream_chat(client: Any, model: str, messages: list[dict[str, Any]], *, stats: StreamStats | None = None,
                **params: Any) -> Iterator[str]:
    """Yield the answer's text pieces as they arrive; fill ``stats`` (usage, timings) on the way."""
    # A generator: the request leaves on the first next(), and close() always reaches the stream.
    started = time.perf_counter()  # before the request: the engine may prefill before answering
    stream = client.chat.completions.create(model=model, messages=messages, stream=True,
                                            stream_options={"include_usage": True}, **request_params(params))
    yield from _stream(stream, lambda choice: choice.delta.content, stats or StreamStats(), started)


def stream_tool_round(client: Any, model: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                      tool_choice: Any, calls: list[dict[str, Any]], *, stats: StreamStats | None = None,
                      **params: Any) -> Iterator[str]:
    """Yield the answer's text pieces while ``tools`` are offered; once the stream ends, the tool calls the model
    made are in ``calls`` (OpenAI ``tool_calls`` entries, their arguments as the model wrote them)."""
    started = time.perf_counter()
    stream = client.chat.completions.create(model=model, messages=messages, tools=tools, tool_choice=tool_choice,
                                            stream=True, stream_options={"include_usage": True},
                                            **request_params(params))
    # A streamed call arrives in pieces keyed by index: the id and name first, the arguments in fragments.
    parts: dict[int, dict[str, Any]] = {}

    def text_and_calls(choice: Any) -> str | None:
        for delta in choice.delta.tool_calls or []:
            slot = parts.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
            slot["id"] = slot["id"] or delta.id
            if delta.function is not None:
                slot["name"] += delta.function.name or ""
                slot["arguments"] += delta.function.arguments or ""
        return choice.delta.content

    yield from _stream(stream, text_and_calls, stats or StreamStats(), started)
    calls += [{"id": slot["id"] or f"call_{index}", "type": "function",
               "function": {"name": slot["name"], "arguments": slot["arguments"]}}
              for index, slot in sorted(parts.items())]


def stream_completion(client: Any, model: str, prompt: str, *, stats: StreamStats | None = None,
                      **params: Any) -> Iterator[str]:
    """Yield a plain completion's text pieces as they arrive; fill ``stats`` (usage, timings) on the way."""
    started = time.perf_counter()
    stream = client.completions.create(model=model, prompt=prompt, stream=True,
                                       stream_options={"include_usage": True}, **request_params(params))
    yield from _stream(stream, lambda choice: choice.text, stats or StreamStats(), started)


def chat_turn(client: Any, model: str, conversation: Conversation, text: str, *,
              images: list[str | bytes | Path] | None = None, stats: StreamStats | None = None,
              **params: Any) -> Iterator[str]:
    """Send one user turn, yield the streamed answer, and record both in ``conversation``.

    The answer is recorded even when the consumer stops early (what arrived is kept).
    """
    conversation.messages.append(user_message(text, images))
    pieces: list[str] = []
    try:
        for piece in stream_chat(client, model, conversation.request_messages(), stats=stats, **params):
            pieces.append(piece)
            yield piece
    except BaseException:
        if not pieces:
            conversation.messages.pop()  # nothing came back: forget the question too
            raise
        conversation.messages.append({"role": "assistant", "content": "".join(pieces)})
        raise
    conversation.messages.append({"role": "assistant", "content": "".join(pieces)})


def _collect(base_url: str, api_key: str, stream: Any, payload: Any, on_piece: Any, sampling: dict[str, Any],
             fmt: OutputFormat | None, engine: str, endpoint: str) -> Reply:
    if fmt is not None:
        sampling["extra_body"] = {**(sampling.get("extra_body") or {}), **fmt.request_fields(engine, endpoint)}
    stats, pieces = StreamStats(), []
    with openai_client(base_url, api_key) as client:
        for piece in stream(client, *payload, stats=stats, **sampling):
            pieces.append(piece)
            if on_piece is not None:
                on_piece(piece)
    reply = Reply("".join(pieces), stats)
    if fmt is not None:
        reply.value = fmt.value_of(reply.text, stats)
    return reply


def chat_once(base_url: str, api_key: str, model: str, message: str | list[dict[str, Any]], *,
              system: str | None = None, images: list[Any] | None = None, on_piece: Any = None,
              json_schema: Any = None, choice: list[str] | None = None, regex: str | None = None,
              grammar: str | Path | None = None, engine: str = "vllm", **sampling: Any) -> Reply:
    """Send one streamed chat request and return its :class:`Reply` (``server.chat(...)``).

    With ``json_schema``, ``choice``, ``regex`` or ``grammar`` (one of them, see :func:`output_format`) the
    answer is constrained on the server and ``reply.value`` is the parsed, checked value.
    """
    fmt = output_format(json_schema=json_schema, choice=choice, regex=regex, grammar=grammar)
    messages = message if isinstance(message, list) else [user_message(message, images)]
    if system:
        messages = [{"role": "system", "content": system}, *messages]
    return _collect(base_url, api_key, stream_chat, (model, messages), on_piece, sampling, fmt, engine, "chat")


def generate_once(base_url: str, api_key: str, model: str, prompt: str, *, on_piece: Any = None,
                  json_schema: Any = None, choice: list[str] | None = None, regex: str | None = None,
                  grammar: str | Path | None = None, engine: str = "vllm", **sampling: Any) -> Reply:
    """Stream one plain completion of ``prompt`` and return its :class:`Reply` (``server.generate(...)``);
    structured output as for :func:`chat_once`."""
    fmt = output_format(json_schema=json_schema, choice=choice, regex=regex, grammar=grammar)
    return _collect(base_url, api_key, stream_completion, (model, prompt), on_piece, sampling, fmt, engine,
                    "completion")
