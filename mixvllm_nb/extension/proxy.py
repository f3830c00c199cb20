"""The authenticated streaming proxy: ``/mixvllm/servers/<name>/v1/...`` to a registered server's OpenAI API.

Clients authenticate to Jupyter (token, cookie + XSRF, or ``Authorization: Bearer <jupyter token>``,
so ``openai.OpenAI(base_url=.../mixvllm/servers/<name>/v1, api_key=<jupyter token>)`` works). They
never choose a host or port: only a registered name and a path from a short allowlist. Upstream,
the server's own API key replaces every credential of the client. Each chunk of a streamed answer
is written and flushed as soon as it arrives (jupyter-server-proxy 4.6 buffers whole answers),
and a client that goes away closes the upstream request, so the engine aborts the generation.
"""

from __future__ import annotations

import asyncio
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from ..errors import ServerNotFoundError
from ..process import registry
from .base import MixvllmHandler, OpenAIError

# Upstream path -> methods. Everything else a server offers (vLLM's /tokenize, /invocations,
# /pause, dev endpoints, ...) stays unreachable through Jupyter.
ALLOWED_PATHS: dict[str, tuple[str, ...]] = {
    "v1/models": ("GET",),
    "v1/completions": ("POST",),
    "v1/chat/completions": ("POST",),
    "v1/embeddings": ("POST",),
    "health": ("GET",),
    "metrics": ("GET",),
}

# Request headers that may travel upstream. An allowlist, so that no credential leaks by being
# forgotten: Cookie, Authorization (the Jupyter token), X-XSRFToken, Host, Referer (it can hold
# ?token=), Origin and any header a JupyterHub or a reverse proxy adds all stay here.
FORWARDED_REQUEST_HEADERS = ("Content-Type", "Accept", "User-Agent", "X-Request-Id")
FORWARDED_RESPONSE_HEADERS = ("Content-Type", "X-Request-Id")
_DEAD_STATES = ("exited", "crashed", "stopped")


def upstream_headers(client_headers: Any, api_key: str) -> dict[str, str]:
    """Return the headers of the upstream request: the allowlisted ones plus the server's key."""
    headers = {name: client_headers[name] for name in FORWARDED_REQUEST_HEADERS if name in client_headers}
    # Identity: the bytes are relayed as they come, never decompressed and recompressed.
    headers["Accept-Encoding"] = "identity"
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


class ProxyHandler(MixvllmHandler):
    """Forward one allowlisted request to a registered server and stream its answer back."""

    SUPPORTED_METHODS = ("GET", "POST", "OPTIONS")  # type: ignore[assignment]
    _pump: asyncio.Task | None = None

    @web.authenticated
    @authorized
    async def get(self, name: str, path: str) -> None:
        """Forward a GET (models, health, metrics)."""
        await self._forward(name, path)

    @web.authenticated
    @authorized
    async def post(self, name: str, path: str) -> None:
        """Forward a POST (completions, chat completions, embeddings)."""
        await self._forward(name, path)

    def on_connection_close(self) -> None:
        """Cancel the upstream request when the client goes away, so the engine stops generating."""
        super().on_connection_close()
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()

    async def _forward(self, name: str, path: str) -> None:
        methods = ALLOWED_PATHS.get(path)
        if methods is None:
            allowed = ", ".join(sorted(ALLOWED_PATHS))
            raise OpenAIError(404, f"{path!r} is not forwarded to model servers; allowed: {allowed}",
                              code="path_not_allowed")
        if self.request.method not in methods:
            raise OpenAIError(405, f"{path} accepts {', '.join(methods)}, not {self.request.method}",
                              code="method_not_allowed")
        limit = self.state.config.max_body_bytes
        if len(self.request.body) > limit:
            raise OpenAIError(413, f"request body of {len(self.request.body)} bytes is over the limit of "
                              f"{limit} bytes (MixVLLM.max_body_bytes)", code="body_too_large")
        record = await self._usable_record(name)
        # The upstream exchange runs as its own task so that a client disconnect can cancel it
        # at once, even while the engine sends nothing (a long prefill).
        self._pump = asyncio.ensure_future(self._relay(record, path))
        await asyncio.wait([self._pump])
        if self._pump.cancelled():
            return  # the client left; nothing to answer
        self._pump.result()

    async def _usable_record(self, name: str) -> registry.ServerRecord:
        """Return the record of a server that can take requests, or raise 404/502/503."""
        try:
            record = registry.get(name)
        except (ServerNotFoundError, ValueError) as exc:
            raise OpenAIError(404, str(exc), code="server_not_found") from None
        assert record is not None
        if record.attached:
            return record
        if record.is_dead() or record.state in _DEAD_STATES:
            state = record.state if record.state in _DEAD_STATES else "exited"
            raise OpenAIError(502, f"server {name!r} is not running ({state}); start it again "
                              "(%vllm_serve, the panel, or POST /mixvllm/api/servers)", code="server_dead")
        # A "starting" record may be stale when its owner is gone (a detached server): ask the
        # server itself before telling the client to wait.
        if record.state == "starting" and not await self._healthy(record):
            retry = str(self.state.config.retry_after)
            raise OpenAIError(503, f"server {name!r} is still starting; retry in a few seconds",
                              code="server_starting", headers={"Retry-After": retry})
        return record

    async def _healthy(self, record: registry.ServerRecord) -> bool:
        import httpx

        try:
            response = await self.state.http.get(
                f"{record.base_url.rstrip('/')}/health", headers=upstream_headers({}, record.api_key),
                timeout=self.state.config.health_timeout,
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def _relay(self, record: registry.ServerRecord, path: str) -> None:
        import httpx

        url = f"{record.base_url.rstrip('/')}/{path}"  # the client's query string is dropped: it may hold ?token=
        headers = upstream_headers(self.request.headers, record.api_key)
        body = self.request.body if self.request.method == "POST" else None
        content_type = "application/json"
        try:
            async with self.state.http.stream(self.request.method, url, headers=headers, content=body) as upstream:
                self.set_status(upstream.status_code, upstream.reason_phrase or None)
                for header in FORWARDED_RESPONSE_HEADERS:
                    if header in upstream.headers:
                        self.set_header(header, upstream.headers[header])
                content_type = upstream.headers.get("Content-Type", content_type)
                self.set_header("Content-Type", content_type)
                streamed = "Content-Length" not in upstream.headers
                if content_type.startswith("text/event-stream"):
                    self.set_header("Cache-Control", "no-cache")
                    self.set_header("X-Accel-Buffering", "no")  # and nginx in front of Jupyter must not buffer
                if streamed:
                    await self.flush()  # the headers now: a client learns at once that its stream began
                async for chunk in upstream.aiter_raw():
                    self.write(chunk)
                    if streamed:
                        await self.flush()  # each server-sent event leaves now, not with the next one
        except StreamClosedError:
            return  # the client left mid-answer; leaving the block closed the upstream request
        except httpx.HTTPError as exc:
            if self._headers_written:
                self.log.warning("mixvllm: upstream %s broke off mid-answer: %s", record.name, exc)
                return
            raise OpenAIError(502, f"server {record.name!r} at {record.base_url} could not be reached: "
                              f"{type(exc).__name__}: {exc}", code="upstream_unreachable") from None
        self.finish(set_content_type=content_type)
