"""HTTP/1.1 exchanges with model servers, for the proxy: the request, the answer's head, its body as it comes.

Not httpx: it yielded one piece per HTTP chunk, that is per server-sent event, and the proxy wrote
and flushed each: against a fast chunked upstream (as uvicorn frames vLLM's streams) that was 0.07x
direct's events/s (``benchmarks/proxy.py synthetic --burst``), and a connection per request with the
address resolved in a worker thread put its first event ~7 ms after direct's. Here
:meth:`Upstream.body` yields all that one socket read brought, however many events that is (a slow
engine's events still come one read each, as they arrive), chunked framing is checked in C calls and
passed on as it is, and connections are kept alive between requests.
"""

from __future__ import annotations

import asyncio
import functools
import re
import ssl
import time
import weakref
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

READ_SIZE = 2**16
# A chunk's size line: hex digits (at most 16), maybe extensions (ignored), CRLF; and the same
# after the CRLF that ends the chunk before it.
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[^\r\n]*)?\r\n")
_NEXT_SIZE = re.compile(rb"\r\n([0-9A-Fa-f]{1,16})(?:[ \t]*;[^\r\n]*)?\r\n")


class UpstreamError(Exception):
    """The model server could not be reached, or broke HTTP/1.1."""


class _Stale(Exception):
    """A kept-alive connection the server closed while it was idle: nothing of the request was used."""


class Upstream:
    """One HTTP/1.1 exchange with a model server on asyncio streams, on a kept-alive connection when one is idle."""

    def __init__(self, key: tuple[str, str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 version: str, status: int, reason: str, headers: dict[str, str]):
        self.key, self.reader, self.writer = key, reader, writer
        self.status, self.reason, self.headers = status, reason, headers
        self._head_only = status in (204, 304)
        self._chunks: _Chunks | None = None
        self._complete = self._head_only or headers.get("content-length") == "0"  # the whole answer was read
        connection = headers.get("connection", "").lower()
        self._keep = "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection

    @classmethod
    async def open(cls, method: str, url: str, headers: dict[str, str], body: bytes | None, *,
                   connect_timeout: float, write_timeout: float = 60.0) -> Upstream:
        """Send the request and read the answer's head; raise UpstreamError (or OSError) when that fails."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamError(f"not an http(s) URL: {url}")
        context = _tls_context() if parts.scheme == "https" else None
        key = (parts.scheme, parts.hostname, parts.port or (443 if context else 80))
        lines = [f"{method} {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc.rpartition('@')[2]}"]
        for name, value in headers.items():
            if any(c in value for c in "\r\n\0"):
                raise UpstreamError(f"header {name}: line breaks are not allowed in a value")
            lines.append(f"{name}: {value}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        try:
            # One write for head and body: two small writes would wait on each other's ACK (Nagle).
            request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")
        except UnicodeEncodeError as exc:
            raise UpstreamError(f"the request's head is not Latin-1: {exc}") from None
        idle = _take_idle(key)
        if idle is not None:
            try:
                return await cls._exchange(key, *idle, request, write_timeout, reused=True)
            except _Stale:
                pass  # closed by the server while idle, before it read anything: send it on a new one
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(key[1], key[2], ssl=context, limit=READ_SIZE), connect_timeout)
        except TimeoutError:
            raise UpstreamError(f"no connection within {connect_timeout} s") from None
        return await cls._exchange(key, reader, writer, request, write_timeout, reused=False)

    @classmethod
    async def _exchange(cls, key: tuple[str, str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        request: bytes, write_timeout: float, *, reused: bool) -> Upstream:
        sent = time.monotonic()
        try:
            writer.write(request)
            if writer.transport.get_write_buffer_size():  # mostly sent at once: no task for wait_for then
                await asyncio.wait_for(writer.drain(), write_timeout)
            while True:
                version, status, reason, answer = _parse_head(await reader.readuntil(b"\r\n\r\n"))
                if reused and status == 408:  # "Request Timeout": a server's goodbye to an idle connection
                    raise ConnectionResetError("408 on a kept-alive connection")
                if not 100 <= status < 200:  # 100 Continue and other interim answers precede the real one
                    return cls(key, reader, writer, version, status, reason, answer)
        except BaseException as exc:
            writer.transport.abort()
            # Closed under us at once: the server's idle timeout met our request, which it never read.
            # Later, it may have worked on the request before it died: that is not sent twice.
            if reused and time.monotonic() - sent < STALE_SECONDS and (isinstance(exc, ConnectionError) or (
                    isinstance(exc, asyncio.IncompleteReadError) and not exc.partial)):
                raise _Stale from None
            if isinstance(exc, asyncio.IncompleteReadError | asyncio.LimitOverrunError):
                raise UpstreamError(f"the answer's head was cut off or too long ({type(exc).__name__})") from None
            if isinstance(exc, TimeoutError):
                raise UpstreamError(f"the request could not be sent within {write_timeout} s") from None
            raise

    async def body(self, *, framed: bool = False) -> AsyncIterator[bytes]:
        """Yield the answer's body, as much as each socket read brings.

        A chunked body comes without its framing, or with ``framed``, as the server framed it, up to
        (not including) its last chunk: the caller then relays it verbatim and ends it itself.
        """
        if self._head_only:
            return
        if self.chunked:
            chunks = self._chunks = _Chunks(strip=not framed)
            while not chunks.done:
                data = await self.reader.read(READ_SIZE)
                if not data:
                    raise UpstreamError("the answer ended before its last chunk")
                data = chunks.feed(data)
                if data:
                    yield data
            self._complete = chunks.clean_end
            return
        length = self.headers.get("content-length")
        left = int(length) if length and length.isdigit() else None
        self._keep = self._keep and left is not None  # an answer without a length ends with its connection
        while left is None or left > 0:
            data = await self.reader.read(READ_SIZE if left is None else min(left, READ_SIZE))
            if not data:
                if left:
                    raise UpstreamError(f"the answer ended {left} bytes short of its Content-Length")
                return
            if left is not None:
                left -= len(data)
            yield data
        self._complete = True

    @property
    def buffered(self) -> bool:
        """Whether some of the body came with the head (read already, waiting in the reader)."""
        return bool(getattr(self.reader, "_buffer", b""))  # asyncio's StreamReader: no public peek

    @property
    def chunked(self) -> bool:
        return not self._head_only and "chunked" in self.headers.get("transfer-encoding", "").lower()

    @property
    def between_chunks(self) -> bool:
        """Whether what was relayed of a chunked body ends where a chunk ends."""
        chunks = self._chunks
        return chunks is None or not (chunks.left or chunks.crlf or chunks.held)

    def close(self) -> None:
        """Keep the connection for the next request if the answer was read whole; else drop it now.

        Dropped, it tells a server still generating that its client went away.
        """
        if self._complete and self._keep and not self.writer.is_closing():
            _keep_idle(self.key, self.reader, self.writer)
        else:
            self.writer.transport.abort()


# Idle kept-alive connections, per event loop (a connection belongs to the loop it was opened on) and
# server: reusing one saves the TCP handshake and the server's accept, a third of the proxy's own time
# before the first event. Kept IDLE_SECONDS, well under the servers' own keep-alive (uvicorn: 5 s).
_IDLE: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str, int], list[tuple[
    float, asyncio.StreamReader, asyncio.StreamWriter]]]] = weakref.WeakKeyDictionary()
IDLE_SECONDS = 2.0
MAX_IDLE = 16  # per server
STALE_SECONDS = 0.5


def _take_idle(key: tuple[str, str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    idle = _IDLE.get(asyncio.get_running_loop(), {}).get(key, [])
    while idle:
        since, reader, writer = idle.pop()
        if time.monotonic() - since < IDLE_SECONDS and not reader.at_eof() and not writer.is_closing():
            return reader, writer
        writer.transport.abort()
    return None


def _keep_idle(key: tuple[str, str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    loop = asyncio.get_running_loop()
    idle = _IDLE.setdefault(loop, {}).setdefault(key, [])
    if len(idle) >= MAX_IDLE:
        writer.transport.abort()
        return
    idle.append((time.monotonic(), reader, writer))
    loop.call_later(IDLE_SECONDS, _drop_expired, idle)


def _drop_expired(idle: list[tuple[float, asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    now = time.monotonic()
    for entry in [e for e in idle if now - e[0] >= IDLE_SECONDS]:
        idle.remove(entry)
        entry[2].transport.abort()


def close_idle_connections() -> None:
    """Close the kept-alive connections of the running event loop (the extension is stopping)."""
    for idle in _IDLE.pop(asyncio.get_running_loop(), {}).values():
        for _, _, writer in idle:
            writer.transport.abort()


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()  # loading the CA certificates takes milliseconds: once


def _parse_head(head: bytes) -> tuple[str, int, str, dict[str, str]]:
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise UpstreamError(f"not an HTTP/1.x answer: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return version, int(code), reason, headers


class _Chunks:
    """Find the chunks of a chunked body in the pieces it comes in: return them framed, or their payload.

    The per-event cost of the proxy is mostly this loop (benchmarks/proxy.py synthetic): locals, and
    C calls (one regular expression per size line) instead of slicing and searching in Python.
    """

    def __init__(self, *, strip: bool) -> None:
        self.strip = strip
        self.held = b""  # a size line not yet whole, kept for the next piece
        self.left = 0  # payload bytes still to come in the current chunk
        self.crlf = False  # the CRLF that ends a chunk's payload comes next
        self.done = False  # the last chunk began: the body ends here (trailers are dropped)
        self.clean_end = False  # it ended with the last chunk and an empty trailer, nothing more

    def feed(self, data: bytes) -> bytes:
        """Return what ``data`` completes: whole framing up to the last chunk, or only the payload."""
        buf = self.held + data if self.held else data
        pos, end, left, crlf, strip = 0, len(buf), self.left, self.crlf, self.strip
        payload: list[bytes] = []
        while True:
            if left:
                if end - pos <= left:  # the chunk goes on in the next piece (or ends with this one)
                    if strip:
                        payload.append(buf[pos:])
                    left -= end - pos
                    pos = end
                    if left:
                        break
                else:
                    if strip:
                        payload.append(buf[pos:pos + left])
                    pos += left
                    left = 0
                crlf = True
            # The CRLF that ends a chunk and the next size line, in one match (the hot path).
            line = (_NEXT_SIZE if crlf else _CHUNK_SIZE).match(buf, pos)
            if line is None:
                if crlf and buf.startswith(b"\r\n", pos):
                    pos, crlf = pos + 2, False  # relayed now: a client may hold a chunk until its CRLF
                elif crlf and buf[pos:pos + 2] not in (b"", b"\r"):
                    raise UpstreamError("malformed chunked answer: no CRLF after a chunk")
                rest = buf[pos:pos + 1100] if not crlf else b""
                if b"\r\n" in rest or len(rest) >= 1100:
                    raise UpstreamError(f"malformed chunked answer: chunk size line {rest[:20]!r}")
                break  # the size line goes on in the next piece
            left = int(line[1], 16)
            if left == 0:
                # No trailer fields and nothing after: the connection can carry the next answer.
                self.done, self.held, self.clean_end = True, b"", buf[line.end():] == b"\r\n"
                return b"".join(payload) if strip else buf[:pos + 2 if crlf else pos]
            pos, crlf = line.end(), False
        self.held, self.left, self.crlf = buf[pos:], left, crlf
        return b"".join(payload) if strip else buf[:pos]
