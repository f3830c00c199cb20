"""The authenticated streaming proxy: ``/mixvllm/servers/<name>/v1/...`` to a registered server's OpenAI API.

``<name>`` may also be a route (:mod:`.routing`): several servers behind one name, chosen by the body's model.

Clients authenticate to Jupyter (token, cookie + XSRF, or ``Authorization: Bearer <jupyter token>``,
so ``openai.OpenAI(base_url=.../mixvllm/servers/<name>/v1, api_key=<jupyter token>)`` works). They
never choose a host or port: only a registered name and a path from a short allowlist. Upstream,
the server's own API key replaces every credential of the client. Only JSON, server-sent events and
plain text come back (an HTML answer would render at Jupyter's origin), always with ``nosniff``.
A body over ``MixVLLM.max_body_bytes`` is refused as it arrives, never held in memory whole.

Streamed answers are relayed as they arrive: what one read from the model server brings is written
and flushed at once (jupyter-server-proxy 4.6 buffers whole answers unless the client's Accept is
exactly ``text/event-stream``), and a client that goes away closes the upstream connection, so the
engine aborts the generation. The upstream exchange is :class:`.upstream.Upstream` (see its
docstring for why not httpx).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError

from ..errors import MixVLLMError, ServerNotFoundError
from ..process import registry
from .base import MixvllmHandler, OpenAIError, error_body
from .routing import relay_route, route_named
from .upstream import Upstream, UpstreamError

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
# Media types relayed to the browser's origin: none of them renders as a page or runs as a script.
RELAYED_CONTENT_TYPES = ("application/json", "text/event-stream", "text/plain")
# After a 413, up to this much more of the body is read and dropped so that the client, still
# sending, can read its answer (a connection closed on unread data is reset, and the answer lost).
DRAIN_BYTES = 16 * 2**20
_DEAD_STATES = ("exited", "crashed", "stopped")


@contextlib.contextmanager
def _corked(stream: Any) -> Iterator[None]:
    """Send what is written meanwhile as one TCP packet (Linux's TCP_CORK; elsewhere as written)."""
    cork = getattr(socket, "TCP_CORK", None)
    sock = stream.socket
    try:
        if cork is not None and sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, cork, 1)
        yield
    finally:
        with contextlib.suppress(OSError):  # closed meanwhile: nothing is left to send
            if cork is not None and stream.socket is not None:
                sock.setsockopt(socket.IPPROTO_TCP, cork, 0)


def upstream_headers(client_headers: Any, api_key: str) -> dict[str, str]:
    """Return the headers of the upstream request: the allowlisted ones plus the server's key."""
    headers = {name: client_headers[name] for name in FORWARDED_REQUEST_HEADERS if name in client_headers}
    # Identity: the bytes are relayed as they come, never decompressed and recompressed.
    headers["Accept-Encoding"] = "identity"
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def relayed_content_type(value: str | None) -> str | None:
    """Return the Content-Type to answer with for an upstream one, or None when it must not be relayed."""
    if not value:
        return "text/plain; charset=utf-8"  # no type (vLLM's /health): say text, never let a browser guess
    media = value.split(";", 1)[0].strip().lower()
    return value if media in RELAYED_CONTENT_TYPES else None


@web.stream_request_body
class ProxyHandler(MixvllmHandler):
    """Forward one allowlisted request to a registered server and stream its answer back."""

    SUPPORTED_METHODS = ("GET", "POST", "OPTIONS")  # type: ignore[assignment]
    _pump: asyncio.Task | None = None
    _client_left = False
    _refused = False  # a 413 went out: what still comes of the body is dropped
    _received = 0  # bytes of the body so far (after a 413: bytes dropped)

    def set_default_headers(self) -> None:
        """Jupyter's defaults, and ``nosniff`` that no deployment setting removes (errors included)."""
        super().set_default_headers()
        self.set_header("X-Content-Type-Options", "nosniff")

    async def prepare(self) -> None:  # type: ignore[override]
        """Authenticate (Jupyter), then refuse a declared body over the limit before reading any of it."""
        self._chunks: list[bytes] = []
        await super().prepare()
        declared = self.request.headers.get("Content-Length", "")
        limit = self.state.config.max_body_bytes
        if declared.isdigit() and int(declared) > limit:
            # Tornado's own limit (a bare 400) must not answer first: we read and drop instead.
            self.request.connection.set_max_body_size(int(declared))  # type: ignore[union-attr]
            self._refuse(f"request body of {int(declared)} bytes (Content-Length) is over the limit of {limit} "
                         "bytes (MixVLLM.max_body_bytes)")

    def data_received(self, chunk: bytes) -> None:
        """Keep the body as it arrives, counting; refuse it once it passes the limit, and drop the rest."""
        self._received += len(chunk)
        if self._refused:
            if self._received > DRAIN_BYTES and not self._finished:
                self.finish()  # enough politeness: Tornado closes the connection and reads no more
            return
        limit = self.state.config.max_body_bytes
        if self._received > limit:
            self._refuse(f"request body (chunked) went over the limit of {limit} bytes (MixVLLM.max_body_bytes); "
                         "the rest is dropped")
            return
        self._chunks.append(chunk)

    def _refuse(self, message: str) -> None:
        """Answer 413 now, while the client may still be sending (its answer must not wait for its body)."""
        self._refused, self._chunks, self._received = True, [], 0
        payload = error_body(413, message, "body_too_large").encode()
        self.set_status(413)
        self.set_header("Content-Type", "application/json")
        self.set_header("Content-Length", str(len(payload)))
        self.write(payload)
        self.flush()

    async def get(self, name: str, path: str) -> None:
        """Forward the request (GET: models, health, metrics; POST: completions, chat, embeddings)."""
        if not self._refused:
            await self._authorized_forward(name, path)
        elif not self._finished:
            self.finish()  # the 413 went out already; the body has now been read and dropped

    post = get  # the same checks: ALLOWED_PATHS says which method each path takes

    @web.authenticated
    @authorized
    async def _authorized_forward(self, name: str, path: str) -> None:
        await self._forward(name, path)

    def on_connection_close(self) -> None:
        """Cancel the upstream request when the client goes away, so the engine stops generating."""
        super().on_connection_close()
        self._client_left = True
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
        if self._client_left:
            return  # gone while its body arrived: nothing to ask the engine
        # The exchange runs as its own task so that a client disconnect cancels it at once: while the
        # proxy asks a "starting" server's /health, and while the engine sends nothing (a long prefill).
        self._pump = asyncio.ensure_future(self._relay_when_usable(name, path))
        await asyncio.wait([self._pump])
        if self._pump.cancelled():
            return  # the client left; nothing to answer
        self._pump.result()

    async def _relay_when_usable(self, name: str, path: str) -> None:
        # The server's record first: a server of that name wins over a route, so routes.json is read
        # only for a name no server has (one file read less on every request to a server).
        try:
            record = registry.get(name, missing_ok=True)
        except ValueError as exc:
            raise OpenAIError(404, str(exc), code="server_not_found") from None
        if record is None:
            route = route_named(name)  # a route's request continues below, at the server that serves its model
            if route is not None:
                await relay_route(self, route, path)
                return
        await self._relay(await self._usable_record(name, record), path)

    async def _usable_record(self, name: str, record: registry.ServerRecord | None = None) -> registry.ServerRecord:
        """Return the record of a server that can take requests (``record``: just read), or raise 404/502/503."""
        if record is None:
            try:
                record = registry.get(name)
            except (ServerNotFoundError, ValueError) as exc:
                raise OpenAIError(404, str(exc), code="server_not_found") from None
        assert record is not None
        if record.attached:
            return await self._awake(record)
        if record.state in _DEAD_STATES or record.is_dead(ask_cluster=False):  # no network call on the loop
            state = record.state if record.state in _DEAD_STATES else "exited"
            raise OpenAIError(502, f"server {name!r} is not running ({state}); start it again "
                              "(%vllm_serve, the panel, or POST /mixvllm/api/servers)", code="server_dead")
        # A "starting" record may be stale when its owner is gone (a detached server): ask the
        # server itself before telling the client to wait.
        if record.state == "starting" and not await self._healthy(record):
            retry = str(self.state.config.retry_after)
            raise OpenAIError(503, f"server {name!r} is still starting; retry in a few seconds",
                              code="server_starting", headers={"Retry-After": retry})
        return await self._awake(record)

    async def _awake(self, record: registry.ServerRecord) -> registry.ServerRecord:
        """Return the record once its server is awake (one put to sleep is woken; the request waits meanwhile)."""
        if not record.sleeping:
            return record
        from ..api import server_from_record
        from ..sleep import wake_server

        try:
            said = await IOLoop.current().run_in_executor(None, wake_server, server_from_record(record))
        except MixVLLMError as exc:
            raise OpenAIError(503, f"server {record.name!r} is asleep and did not wake: {exc}",
                              code="server_asleep") from None
        self.log.info("mixvllm: %s (woken for a request)", said)
        return record

    async def _healthy(self, record: registry.ServerRecord) -> bool:
        timeout = self.state.config.health_timeout
        upstream = None
        try:
            upstream = await asyncio.wait_for(Upstream.open(
                "GET", f"{record.base_url.rstrip('/')}/health", upstream_headers({}, record.api_key), None,
                connect_timeout=timeout), timeout)
            return upstream.status == 200
        except (UpstreamError, OSError, TimeoutError):
            return False
        finally:
            if upstream is not None:
                upstream.close()

    async def _relay(self, record: registry.ServerRecord, path: str) -> None:
        url = f"{record.base_url.rstrip('/')}/{path}"  # the client's query string is dropped: it may hold ?token=
        body = b"".join(self._chunks) if self.request.method == "POST" else None
        self._chunks = []
        try:
            upstream = await Upstream.open(self.request.method, url, upstream_headers(self.request.headers,
                                           record.api_key), body, connect_timeout=self.state.config.connect_timeout)
        except (UpstreamError, OSError) as exc:
            raise OpenAIError(502, f"server {record.name!r} at {record.base_url} could not be reached: "
                              f"{type(exc).__name__}: {exc}", code="upstream_unreachable") from None
        try:
            await self._relay_answer(record, upstream)
        finally:
            upstream.close()  # also on cancellation: the engine sees its client leave

    async def _relay_answer(self, record: registry.ServerRecord, upstream: Upstream) -> None:
        content_type = relayed_content_type(upstream.headers.get("content-type"))
        if content_type is None:
            raise OpenAIError(502, f"server {record.name!r} answered {upstream.status} with Content-Type "
                              f"{upstream.headers['content-type'][:100]!r}, which is not relayed; allowed: "
                              f"{', '.join(RELAYED_CONTENT_TYPES)}", code="upstream_content_type")
        self.set_status(upstream.status, upstream.reason or None)
        for header in FORWARDED_RESPONSE_HEADERS:
            if header.lower() in upstream.headers:
                self.set_header(header, upstream.headers[header.lower()])
        self.set_header("Content-Type", content_type)
        streamed = "content-length" not in upstream.headers
        # A chunked answer goes to an HTTP/1.1 client as the server framed it: Tornado frames our answer
        # the same way (chunked, no Content-Length), so the server's chunks are written to the socket as
        # they are and Tornado's finish() adds the last chunk. No re-framing, no copy of each event.
        framed = (streamed and upstream.chunked and self.request.version == "HTTP/1.1"
                  and not self.application.transforms)  # no gzip (compress_response): it would re-encode
        if content_type.startswith("text/event-stream"):
            self.set_header("Cache-Control", "no-cache")
            self.set_header("X-Accel-Buffering", "no")  # and nginx in front of Jupyter must not buffer
        stream = self.request.connection.stream  # type: ignore[union-attr]
        try:
            if streamed:
                # Each write leaves at once instead of waiting for the client's ACK of the last one
                # (Nagle); Tornado turns this off again when the answer is finished.
                stream.set_nodelay(True)
                if not upstream.buffered:
                    await self.flush()  # the headers now: a client learns at once that its stream began
                # else the first events came with the head: the headers leave with them, in one packet
                # (two would wake the client twice, and on a busy machine the second waits for its turn)
            async for data in upstream.body(framed=framed):
                if framed:
                    if not self._headers_written:
                        with _corked(stream):
                            flushed, written = self.flush(), stream.write(data)
                        await flushed
                        await written
                    else:
                        await stream.write(data)  # after the headers, in order: one IOStream buffer
                else:
                    self.write(data)
                    if streamed:
                        await self.flush()  # what arrived leaves now, not with the next read
        except StreamClosedError:
            return  # the client left mid-answer; the caller closes the upstream connection
        except (UpstreamError, OSError) as exc:
            if not self._headers_written:
                raise OpenAIError(502, f"server {record.name!r} broke off its answer: {exc}",
                                  code="upstream_unreachable") from None
            self.log.warning("mixvllm: upstream %s broke off mid-answer: %s", record.name, exc)
            if framed and not upstream.between_chunks:
                stream.close()  # a last chunk now would end a chunk early: the client must see a cut
                return
        self.finish(set_content_type=content_type)
