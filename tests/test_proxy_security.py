"""What the proxy lets through, in pytest-jupyter's server: answer types a browser would render, big bodies.

The upstreams are stand-ins (test_server_support): a real engine never answers HTML, and the tests
need to see exactly what reached the upstream. Request bodies go over a bare socket, so that a test
controls how much of a body was sent when the answer arrives.
"""

from __future__ import annotations

import asyncio
import json
from http.server import BaseHTTPRequestHandler

import httpx
import pytest
from test_server_support import STANDIN_MODEL, registered_upstream

from mixvllm_nb.extension.proxy import RELAYED_CONTENT_TYPES

LIMIT = 2**20  # max_body_bytes in the body tests
SMALL_LIMIT = [{"MixVLLM": {"max_body_bytes": LIMIT}}]
PAGE = b"<html><body><script>document.title='pwned'</script></body></html>"


@pytest.fixture
def token(jp_serverapp, http_server):
    """The Jupyter token, once the server listens (``jp_http_port`` alone binds but does not serve)."""
    return jp_serverapp.identity_provider.token


@pytest.fixture
def typed(request):
    """A stand-in whose every answer is PAGE with the Content-Type the test's parameter names."""
    content_type = request.param

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(PAGE)))
            self.end_headers()
            self.wfile.write(PAGE)

        do_POST = do_GET

    with registered_upstream("typed") as stand_in:
        stand_in._server.RequestHandlerClass = Handler  # the stand-in's thread serves with it from now on
        stand_in.content_type = content_type
        yield stand_in


@pytest.fixture
def upstream():
    with registered_upstream("standin", events=3, interval=0.01) as stand_in:
        yield stand_in


async def get(jp_fetch, path: str, **kwargs):
    return await jp_fetch("mixvllm", "servers", *path.split("/"), raise_error=False, **kwargs)


@pytest.mark.parametrize("typed", ["text/html", "text/html; charset=utf-8", "TEXT/HTML", "application/xhtml+xml",
                                   "image/svg+xml", "application/javascript", "text/xml",
                                   "application/octet-stream", "multipart/x-mixed-replace"], indirect=True)
async def test_an_answer_a_browser_could_render_is_refused_as_a_502(jp_fetch, typed):
    for method, path, body in (("GET", "typed/v1/models", None), ("POST", "typed/v1/chat/completions", "{}")):
        response = await get(jp_fetch, path, method=method, body=body)
        assert response.code == 502, (path, response.code, response.body[:200])
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert b"<script>" not in response.body and b"<html>" not in response.body
        error = json.loads(response.body)["error"]
        assert error["code"] == "upstream_content_type" and "not relayed" in error["message"]
        assert all(kind in error["message"] for kind in RELAYED_CONTENT_TYPES)  # it says what is allowed


@pytest.mark.parametrize("typed", ["application/json", "application/json; charset=utf-8", "text/plain",
                                   "text/plain; version=0.0.4; charset=utf-8", "text/event-stream"], indirect=True)
async def test_json_text_and_event_streams_are_relayed_with_nosniff(jp_fetch, typed):
    response = await get(jp_fetch, "typed/v1/models")
    assert response.code == 200 and response.body == PAGE  # relayed as it came, under a type that never renders
    assert response.headers["Content-Type"] == typed.content_type
    assert response.headers["X-Content-Type-Options"] == "nosniff"


# Jupyter sends nosniff by default, but its ``headers`` setting can replace it: ours stays.
@pytest.mark.parametrize("jupyter_overrides", [{}, {"ServerApp": {"tornado_settings": {
    "headers": {"X-Content-Type-Options": "sniff-away"}}}}])
async def test_errors_and_streams_carry_nosniff(jp_fetch, upstream):
    missing = await get(jp_fetch, "nobody/v1/models")
    assert missing.code == 404 and missing.headers["X-Content-Type-Options"] == "nosniff"
    body = json.dumps({"model": STANDIN_MODEL, "messages": [], "stream": True})
    stream = await get(jp_fetch, "standin/v1/chat/completions", method="POST", body=body)
    assert stream.code == 200 and stream.headers["Content-Type"] == "text/event-stream"
    assert stream.headers["X-Content-Type-Options"] == "nosniff"
    assert stream.body.count(b"data: ") == 4  # three events and [DONE]


async def open_request(port: int, base_url: str, token: str, framing: str) -> tuple:
    """Open a POST to the stand-in's chat route on a bare socket, headers only; return (reader, writer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (f"POST {base_url}mixvllm/servers/standin/v1/chat/completions HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\nAuthorization: token {token}\r\nContent-Type: application/json\r\n"
            f"{framing}\r\n\r\n")
    writer.write(head.encode())
    await writer.drain()
    return reader, writer


async def read_answer(reader: asyncio.StreamReader, timeout: float = 10) -> tuple[int, dict, dict]:
    """Read one answer with a Content-Length body; return (status, headers, JSON body)."""
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)).decode("latin-1")
    status = int(head.split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:] if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout)
    return status, headers, json.loads(body)


@pytest.mark.parametrize("jupyter_overrides", SMALL_LIMIT)
async def test_a_declared_body_over_the_limit_is_refused_before_the_client_sends_it(
    jp_http_port, jp_base_url, token, upstream
):
    declared = 64 * 2**20
    reader, writer = await open_request(jp_http_port, jp_base_url, token, f"Content-Length: {declared}")
    try:
        writer.write(b'{"model": "x", "pad": "')  # 23 bytes of the 64 MiB: the rest never comes
        await writer.drain()
        # Buffering the body first, Jupyter would wait for the other 64 MiB until the timeout.
        status, headers, body = await read_answer(reader)
    finally:
        writer.close()
    assert status == 413 and body["error"]["code"] == "body_too_large"
    assert f"{declared} bytes" in body["error"]["message"] and f"{LIMIT} bytes" in body["error"]["message"]
    assert headers["x-content-type-options"] == "nosniff"
    assert upstream.hits == []


@pytest.mark.parametrize("jupyter_overrides", SMALL_LIMIT)
async def test_a_chunked_body_is_refused_as_it_passes_the_limit(jp_http_port, jp_base_url, token, upstream):
    reader, writer = await open_request(jp_http_port, jp_base_url, token, "Transfer-Encoding: chunked")
    piece = b"x" * 2**16
    try:
        for _ in range(LIMIT // len(piece) + 4):  # 1.25 MiB, never ended: no last chunk is sent
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        status, _, body = await read_answer(reader)
    finally:
        writer.close()
    assert status == 413 and body["error"]["code"] == "body_too_large" and "chunked" in body["error"]["message"]
    assert upstream.hits == []


@pytest.mark.parametrize("jupyter_overrides", SMALL_LIMIT)
async def test_a_client_that_sends_its_whole_big_body_still_reads_the_413(jp_http_port, jp_base_url, token, upstream):
    # The answer leaves early; the rest of the body is read and dropped, so the connection is not
    # reset under the client while it is still sending (which would lose the answer).
    body = b"x" * (3 * LIMIT)
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(f"http://127.0.0.1:{jp_http_port}{jp_base_url}mixvllm/servers/standin/v1/"
                                     "chat/completions", content=body, headers={"Authorization": f"token {token}"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    assert upstream.hits == []


@pytest.mark.parametrize("jupyter_overrides", SMALL_LIMIT)
async def test_a_chunked_body_under_the_limit_reaches_the_server_whole(jp_http_port, jp_base_url, token, upstream):
    request = {"model": STANDIN_MODEL, "messages": [{"role": "user", "content": "hi"}], "pad": "y" * (LIMIT // 2)}
    payload = json.dumps(request).encode()

    async def pieces():
        for start in range(0, len(payload), 10_000):
            yield payload[start:start + 10_000]

    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(f"http://127.0.0.1:{jp_http_port}{jp_base_url}mixvllm/servers/standin/v1/"
                                     "chat/completions", content=pieces(), headers={"Authorization": f"token {token}"})
    assert response.status_code == 200, response.text
    (hit,) = upstream.hits
    assert hit.json() == request and hit.headers["Content-Length"] == str(len(payload))
