"""One HTTP/1.1 exchange with a model server, for the proxy: the request, the answer's head, its body as it comes.

Not httpx: for each request it resolved the address in a worker thread (anyio's getaddrinfo) and
yielded one piece per HTTP chunk, that is per server-sent event: on main that cost the proxy its
first event 7-12 ms after direct's and 0.07x direct's events/s against a fast chunked upstream
(``benchmarks/proxy.py synthetic``). Here :meth:`Upstream.body` yields all that one socket read
brought, however many events that is, so a fast engine's events go on in few large writes and a
slow engine's each in its own, as it arrives.
"""

from __future__ import annotations

import asyncio
import functools
import re
import ssl
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

READ_SIZE = 2**16
# A chunk's size line: hex digits (at most 16), maybe extensions (ignored), CRLF; and the same
# after the CRLF that ends the chunk before it.
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[^\r\n]*)?\r\n")
_NEXT_SIZE = re.compile(rb"\r\n([0-9A-Fa-f]{1,16})(?:[ \t]*;[^\r\n]*)?\r\n")


class UpstreamError(Exception):
    """The model server could not be reached, or broke HTTP/1.1."""


class Upstream:
    """One HTTP/1.1 exchange with a model server on asyncio streams (a connection each: its close ends it)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int, reason: str,
                 headers: dict[str, str], head_only: bool):
        self.reader, self.writer = reader, writer
        self.status, self.reason, self.headers = status, reason, headers
        self._head_only = head_only
        self._chunks: _Chunks | None = None

    @classmethod
    async def open(cls, method: str, url: str, headers: dict[str, str], body: bytes | None, *,
                   connect_timeout: float, write_timeout: float = 60.0) -> Upstream:
        """Send the request and read the answer's head; raise UpstreamError (or OSError) when that fails."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamError(f"not an http(s) URL: {url}")
        context = _tls_context() if parts.scheme == "https" else None
        port = parts.port or (443 if context else 80)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(parts.hostname, port, ssl=context, limit=READ_SIZE), connect_timeout)
        except TimeoutError:
            raise UpstreamError(f"no connection within {connect_timeout} s") from None
        try:
            lines = [f"{method} {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc.rpartition('@')[2]}"]
            for name, value in headers.items():
                if any(c in value for c in "\r\n\0"):
                    raise UpstreamError(f"header {name}: line breaks are not allowed in a value")
                lines.append(f"{name}: {value}")
            if body is not None:
                lines.append(f"Content-Length: {len(body)}")
            lines.append("Connection: close")  # one exchange per connection: its end is the answer's end
            # One write for head and body: two small writes would wait on each other's ACK (Nagle).
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
            await asyncio.wait_for(writer.drain(), write_timeout)
            while True:
                status, reason, answer = _parse_head(await reader.readuntil(b"\r\n\r\n"))
                if not 100 <= status < 200:  # 100 Continue and other interim answers precede the real one
                    break
        except BaseException as exc:
            writer.transport.abort()
            if isinstance(exc, asyncio.IncompleteReadError | asyncio.LimitOverrunError):
                raise UpstreamError(f"the answer's head was cut off or too long ({type(exc).__name__})") from None
            if isinstance(exc, TimeoutError):
                raise UpstreamError(f"the request could not be sent within {write_timeout} s") from None
            if isinstance(exc, UnicodeEncodeError):
                raise UpstreamError(f"the request's head is not Latin-1: {exc}") from None
            raise
        return cls(reader, writer, status, reason, answer, status in (204, 304))

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
            return
        length = self.headers.get("content-length")
        left = int(length) if length and length.isdigit() else None
        while left is None or left > 0:
            data = await self.reader.read(READ_SIZE if left is None else min(left, READ_SIZE))
            if not data:
                if left:
                    raise UpstreamError(f"the answer ended {left} bytes short of its Content-Length")
                return
            if left is not None:
                left -= len(data)
            yield data

    @property
    def chunked(self) -> bool:
        return not self._head_only and "chunked" in self.headers.get("transfer-encoding", "").lower()

    @property
    def between_chunks(self) -> bool:
        """Whether what was relayed of a chunked body ends where a chunk ends."""
        chunks = self._chunks
        return chunks is None or not (chunks.left or chunks.crlf or chunks.held)

    def close(self) -> None:
        """Drop the connection now (a server still generating sees its client go away)."""
        self.writer.transport.abort()


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()  # loading the CA certificates takes milliseconds: once


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
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
    return int(code), reason, headers


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
                self.done, self.held = True, b""
                return b"".join(payload) if strip else buf[:pos + 2 if crlf else pos]
            pos, crlf = line.end(), False
        self.held, self.left, self.crlf = buf[pos:], left, crlf
        return b"".join(payload) if strip else buf[:pos]
