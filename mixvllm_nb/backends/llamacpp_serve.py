"""``python -m mixvllm_nb.backends.llamacpp_serve``: llama_cpp.server, with generation defaults applied server-side.

vLLM applies a server's generation defaults to every request (``--override-generation-config``);
llama_cpp.server has no such setting. This runs llama_cpp.server's own ``main()`` (same flags) with
one ASGI middleware that fills the config's defaults (``$MIXVLLM_GENERATION_DEFAULTS``, JSON) into
completion and chat requests that leave them out. So every client gets them, as with vLLM: ours
or not, direct or through the Jupyter proxy. It also answers a body that is not a JSON object
with a 400 in OpenAI's error shape (llama_cpp.server answers 500 with a traceback).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

DEFAULTS_ENV = "MIXVLLM_GENERATION_DEFAULTS"
_PATHS = ("/v1/completions", "/v1/chat/completions")

Message = dict[str, Any]
ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                   Awaitable[None]]


class DefaultsMiddleware:
    """ASGI middleware: set each default a completion or chat request's JSON body does not set;
    refuse a body that is not a JSON object (400)."""

    def __init__(self, app: ASGIApp, defaults: dict[str, Any]) -> None:
        self.app = app
        self.defaults = defaults

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in _PATHS:
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending its body
                await self.app(scope, _once(message, receive), send)
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        try:
            body = self.with_defaults(b"".join(chunks))
        except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
            await _send_error(send, 400, f"request body: {exc}")
            return
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        # Later receive() calls reach the client again: a disconnect mid-stream still cancels the answer.
        await self.app({**scope, "headers": headers},
                       _once({"type": "http.request", "body": body, "more_body": False}, receive), send)

    def with_defaults(self, body: bytes) -> bytes:
        """Return the request body with the defaults it leaves unset (or null); ValueError if it is no JSON object."""
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"invalid JSON ({exc}); send a JSON object such as "
                             '{"model": ..., "messages": [...]}') from None
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        for key, value in self.defaults.items():
            if data.get(key) is None:
                data[key] = value
        if data.get("top_k") == -1:  # vLLM's and our "all tokens"; llama.cpp says it with 0
            data["top_k"] = 0
        return json.dumps(data).encode()


async def _send_error(send: Callable[[Message], Awaitable[None]], status: int, message: str) -> None:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": "invalid_json"}})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body.encode()})


def _once(first: Message, receive: Callable[[], Awaitable[Message]]) -> Callable[[], Awaitable[Message]]:
    """Return a receive() that answers ``first``, then the real ones."""
    pending = [first]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


def main() -> None:
    """Run llama_cpp.server's command line with the defaults middleware around its app."""
    import llama_cpp.server.__main__ as server_main

    # A CONFIG_FILE in the user's environment would replace every flag, the API key included.
    os.environ.pop("CONFIG_FILE", None)
    defaults = json.loads(os.environ.get(DEFAULTS_ENV) or "{}")
    create_app = server_main.create_app
    server_main.create_app = lambda **kwargs: DefaultsMiddleware(create_app(**kwargs), defaults)
    server_main.main()


if __name__ == "__main__":
    main()
