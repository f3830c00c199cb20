"""The proxy's streaming fast path in a real ``jupyter server``: events that come with the answer's head.

A model server often sends the head of a streamed answer and its first events in one packet (the
synthetic benchmark's upstream does). The proxy then sends its headers and those events together,
and must still relay them at once (not with the next read), framed exactly as the server framed them,
also when a chunk is cut between that first packet and the next. The upstream here is a bare socket
so that the test decides exactly which bytes come in which write.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
from test_server_support import STANDIN_MODEL

from mixvllm_nb.process import registry


def chunk(event: str) -> bytes:
    data = f"data: {event}\n\n".encode()
    return b"%x\r\n%s\r\n" % (len(data), data)


class SplitUpstream:
    """Answers one streamed request: head, two events and half of a third in one write; the rest once released."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.release = threading.Event()  # set by the test once it holds the first two events
        self.first_write_at: float | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            head, _, body = request.partition(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                          if line.startswith(b"content-length:"))
            while len(body) < length:
                body += conn.recv(65536)
            third = chunk(json.dumps({"choices": [{"index": 0, "delta": {"content": "e2"}}]}))
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + chunk('{"e": 0}') + chunk('{"e": 1}') + third[:20])
            self.first_write_at = time.monotonic()
            self.release.wait(10)
            conn.sendall(third[20:] + chunk("[DONE]") + b"0\r\n\r\n")


def test_events_that_come_with_the_head_are_relayed_at_once_and_framed_as_sent(jupyter):
    upstream = SplitUpstream()
    registry.save(registry.ServerRecord(
        name="split", backend="vllm", model=STANDIN_MODEL, served_model_name=STANDIN_MODEL, host="127.0.0.1",
        port=upstream.port, base_url=f"http://127.0.0.1:{upstream.port}", kind="attached", state="ready"))
    events, held_at = [], None
    try:
        with httpx.stream("POST", f"{jupyter.proxy_v1('split')}/chat/completions", timeout=30,
                          json={"model": STANDIN_MODEL, "stream": True},
                          headers={"Authorization": f"Bearer {jupyter.token}"}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                if len(events) == 2 and held_at is None:
                    held_at = time.monotonic()
                    upstream.release.set()  # only now does the upstream send the rest
    finally:
        upstream.release.set()
        registry.remove("split")
        upstream.listener.close()
    # A proxy that kept the first packet's events for its next read would hold them until the upstream
    # gave up waiting (10 s): they came before the upstream sent anything more.
    assert held_at is not None and upstream.first_write_at is not None
    assert held_at - upstream.first_write_at < 5, held_at - upstream.first_write_at
    assert events == ['{"e": 0}', '{"e": 1}', json.dumps({"choices": [{"index": 0, "delta": {"content": "e2"}}]}),
                      "[DONE]"]
