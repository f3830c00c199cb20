"""The proxy's HTTP/1.1 client against small real servers on loopback: framing, kept-alive connections, staleness.

Each server here is a few lines of asyncio so that a test decides byte by byte what the client gets
(a chunk split anywhere, a connection closed just as a request arrives); the proxy around this client
is tested in a real Jupyter server in test_server_proxy and test_proxy_security.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from mixvllm_nb.extension.upstream import Upstream, UpstreamError, _Chunks, close_idle_connections


def frame(pieces: list[bytes], trailer: bytes = b"") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n" + trailer + b"\r\n"


def test_chunks_split_anywhere_come_out_whole_framed_or_stripped():
    rng = random.Random(7)
    for _ in range(500):
        pieces = [bytes(rng.choice(b"ab\r\n0;") for _ in range(rng.randint(1, 30))) for _ in range(rng.randint(0, 8))]
        body = frame(pieces, rng.choice([b"", b"X-Trailer: 1\r\n"]))
        for strip in (True, False):
            chunks, out, i = _Chunks(strip=strip), [], 0
            while not chunks.done:
                step = rng.randint(1, 12)
                out.append(chunks.feed(body[i:i + step]))
                i += step
            expected = b"".join(pieces) if strip else body[:body.rindex(b"0\r\n")]
            assert b"".join(out) == expected


@pytest.mark.parametrize("body", [b"zz\r\n", b"5\r\nabcdeXY", b"5\r\nabcde\r\nq\r\n", b"-5\r\n", b"0x5\r\n",
                                  b"1" * 17 + b"\r\n", b"5" * 1200])
def test_malformed_framing_is_an_error_not_a_guess(body):
    with pytest.raises(UpstreamError, match="malformed chunked answer"):
        _Chunks(strip=False).feed(body)


def test_a_chunk_is_relayed_with_its_crlf_when_that_has_arrived():
    # Some clients (Tornado's) hand a chunk on only once its CRLF came: it must not wait for the next event.
    chunks = _Chunks(strip=False)
    assert chunks.feed(b"5\r\nhello\r\n") == b"5\r\nhello\r\n"
    assert chunks.feed(b"3\r\nabc\r") == b"3\r\nabc"  # the lone CR waits for its LF
    assert chunks.feed(b"\n") == b"\r\n" and not chunks.done


class Server:
    """A loopback HTTP/1.1 server answering each request with ``answer(request_number)`` bytes, or closing."""

    def __init__(self, answers):
        self.answers = answers
        self.connections = 0
        self.requests = 0
        self.aborted = asyncio.Event()

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        close_idle_connections()
        self.server.close()

    async def serve(self, reader, writer) -> None:
        self.connections += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                answer = self.answers(self.requests)
                if answer is None:
                    break  # close as the request arrives, as a server does whose keep-alive just ran out
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.aborted.set()
        finally:
            writer.close()


def json_answer(text: bytes = b"{}") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text)


async def exchange(url: str, *, framed: bool = False) -> tuple[Upstream, bytes]:
    upstream = await Upstream.open("POST", f"{url}/v1/chat/completions", {}, b"{}", connect_timeout=5)
    body = b"".join([piece async for piece in upstream.body(framed=framed)])
    upstream.close()
    return upstream, body


async def test_a_whole_answer_leaves_its_connection_for_the_next_request():
    sse = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    async with Server(lambda n: json_answer() if n % 2 else sse + frame([b"data: 1\n\n", b"data: 2\n\n"])) as server:
        for _ in range(3):
            assert (await exchange(server.url))[1] == b"{}"
            assert (await exchange(server.url))[1] == b"data: 1\n\ndata: 2\n\n"
        assert server.requests == 6 and server.connections == 1


async def test_a_connection_closed_while_idle_is_replaced_without_losing_the_request():
    # The second request finds the kept connection and is closed on: it goes again on a new one.
    async with Server(lambda n: None if n == 2 else json_answer(b'{"n": %d}' % n)) as server:
        assert (await exchange(server.url))[1] == b'{"n": 1}'
        assert (await exchange(server.url))[1] == b'{"n": 3}'
        assert server.requests == 3 and server.connections == 2


async def test_answers_that_end_their_connection_are_not_kept():
    close = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"
    old = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    async with Server(lambda n: close if n == 1 else old) as server:
        for _ in range(3):
            assert (await exchange(server.url))[1] == b"{}"
        assert server.connections == 3


async def test_an_answer_left_unread_drops_its_connection_so_the_server_sees_the_client_go():
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    async with Server(lambda n: head + b"8\r\ndata: 1\n\r\n" if n == 1 else json_answer()) as server:
        upstream = await Upstream.open("POST", f"{server.url}/v1/completions", {}, b"{}", connect_timeout=5)
        pieces = upstream.body(framed=True)
        assert await anext(pieces) == b"8\r\ndata: 1\n\r\n"  # and the stream goes on
        assert upstream.between_chunks
        upstream.close()  # the client left mid-answer
        await asyncio.wait_for(server.aborted.wait(), 5)
        assert (await exchange(server.url))[0].status == 200 and server.connections == 2


async def test_header_values_cannot_add_lines_to_the_request():
    async with Server(lambda n: json_answer()) as server:
        with pytest.raises(UpstreamError, match="line breaks"):
            await Upstream.open("GET", f"{server.url}/v1/models", {"X-Request-Id": "a\r\nEvil: 1"}, None,
                                connect_timeout=5)
        assert server.requests == 0
