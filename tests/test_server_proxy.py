"""The proxy in a real ``jupyter server`` process: the OpenAI client, streaming timing, disconnects.

Blocking clients (openai, httpx) need a Jupyter server that runs in its own process; timing is
measured on that real path. Answers come from the session's real vLLM server; exact timing and the
moment the upstream sees a disconnect come from the stand-in upstream (a controlled clock).
"""

from __future__ import annotations

import json
import re
import statistics
import time
from http.server import BaseHTTPRequestHandler

import httpx
import pytest
from openai import OpenAI
from test_server_support import STANDIN_MODEL, registered_upstream

from mixvllm_nb.metrics import VllmMetrics


@pytest.fixture
def timed_upstream():
    """5 events 0.5 s apart (a stand-in: exact timing needs a controlled upstream)."""
    with registered_upstream("timed", events=5, interval=0.5) as stand_in:
        yield stand_in


@pytest.fixture
def long_upstream():
    """40 events 0.5 s apart: 20 s, far longer than the 2 s a disconnect may take to reach it."""
    with registered_upstream("long", events=40, interval=0.5) as stand_in:
        yield stand_in


@pytest.fixture
def silent_upstream():
    """Sends its first event only after 20 s (a long prefill)."""
    with registered_upstream("silent", events=1, first_delay=20) as stand_in:
        yield stand_in


def test_openai_client_through_the_proxy_models_completion_chat_stream(jupyter, vllm_server):
    client = OpenAI(base_url=jupyter.proxy_v1(vllm_server.name), api_key=jupyter.token, max_retries=0)
    assert [m.id for m in client.models.list().data] == [vllm_server.served_model_name]
    model = vllm_server.served_model_name
    completion = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8)
    assert completion.choices[0].text.strip()
    question = [{"role": "user", "content": "What is the capital of France?"}]
    chat = client.chat.completions.create(model=model, messages=question, temperature=0)
    assert "Paris" in chat.choices[0].message.content
    pieces = [c.choices[0].delta.content for c in client.chat.completions.create(
        model=model, messages=question, temperature=0, stream=True) if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 3 and "Paris" in "".join(pieces)


def test_the_proxy_refuses_the_openai_client_with_a_wrong_token(jupyter, vllm_server):
    import openai

    client = OpenAI(base_url=jupyter.proxy_v1(vllm_server.name), api_key="not-the-token", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        client.models.list()
    # The server's own key is not a Jupyter credential either: only Jupyter's auth opens the proxy.
    client = OpenAI(base_url=jupyter.proxy_v1(vllm_server.name), api_key=vllm_server.api_key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        client.models.list()


def test_streamed_events_arrive_as_they_are_sent(jupyter, timed_upstream):
    client = OpenAI(base_url=jupyter.proxy_v1("timed"), api_key=jupyter.token, max_retries=0)
    start = time.monotonic()
    arrivals = []
    for chunk in client.chat.completions.create(model=STANDIN_MODEL, messages=[], stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append((time.monotonic() - start, chunk.choices[0].delta.content))
    assert [text for _, text in arrivals] == [f"tok{i} " for i in range(5)]
    times = [t for t, _ in arrivals]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # The upstream spends 2 s between its first and last event (0.5 s apart). A buffering proxy delivers them
    # together once the last is sent: the first after 2 s, the span ~0. Ours keeps the rhythm. A busy machine
    # may stall this client once, which delays one event onto the next: one short gap is allowed, not two.
    assert times[0] < 2.0, times
    assert times[-1] - times[0] >= 1.5 and sum(gap < 0.25 for gap in gaps) <= 1, gaps


def test_streaming_does_not_depend_on_the_accept_header(jupyter, timed_upstream):
    body = {"model": STANDIN_MODEL, "prompt": "x", "stream": True}
    for accept in ("application/json", "*/*", "text/html"):
        start = time.monotonic()
        with httpx.stream("POST", f"{jupyter.proxy_v1('timed')}/completions", json=body, timeout=30,
                          headers={"Authorization": f"Bearer {jupyter.token}", "Accept": accept}) as response:
            assert response.headers["Content-Type"] == "text/event-stream"
            events = (line for line in response.iter_lines() if line.startswith("data: "))
            first = next(events)
            first_at = time.monotonic() - start
            rest = list(events)
        assert first_at < 1.0 and json.loads(first[6:])["choices"][0]["text"] == "tok0 "
        assert rest[-1] == "data: [DONE]" and len(rest) == 5


def test_a_client_that_leaves_mid_stream_ends_the_upstream_request_within_2_s(jupyter, long_upstream):
    body = {"model": STANDIN_MODEL, "messages": [], "stream": True}
    with httpx.stream("POST", f"{jupyter.proxy_v1('long')}/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {jupyter.token}"}) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        assert next(line for line in lines if line.startswith("data: "))  # two events in: mid-stream
        (hit,) = long_upstream.hits
        assert not hit.ended.is_set()
    left_at = time.monotonic()  # leaving the block closed the connection
    assert hit.ended.wait(10), "the upstream request never ended"
    assert hit.client_left, "the upstream finished its answer: the proxy never closed the request"
    assert hit.ended_at - left_at < 2.0


def test_a_client_that_leaves_during_a_silent_prefill_ends_the_upstream_request(jupyter, silent_upstream):
    # No event comes for 20 s, so no write can reveal the closed client: the proxy must notice the
    # disconnect itself and close the upstream request.
    body = {"model": STANDIN_MODEL, "messages": [], "stream": True}
    with httpx.stream("POST", f"{jupyter.proxy_v1('silent')}/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {jupyter.token}"}) as response:
        assert response.status_code == 200  # the headers arrived before any event
        (hit,) = silent_upstream.hits
    left_at = time.monotonic()
    assert hit.ended.wait(10), "the upstream request never ended"
    assert hit.client_left and hit.ended_at - left_at < 2.0


def paced_handler(events: int, interval: float, chunked: bool, sent: list[float]) -> type[BaseHTTPRequestHandler]:
    """A stand-in's handler that streams ``events`` events ``interval`` apart, noting when each left.

    Chunked, one chunk per event, as vLLM (uvicorn) frames a stream; or ended by closing, as HTTP/1.0.
    """

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1" if chunked else "HTTP/1.0"

        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            for i in range(events + 1):
                time.sleep(interval if i else 0)
                event = f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': f'e{i}'}}]})}\n\n"
                data = (event if i < events else "data: [DONE]\n\n").encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                sent.append(time.monotonic())
            if chunked:
                self.wfile.write(b"0\r\n\r\n")

    return Handler


def arrivals(url: str, key: str) -> list[float]:
    """Stream a chat from ``url``; return when each event (and [DONE]) arrived."""
    times = []
    with httpx.stream("POST", f"{url}/chat/completions", json={"model": STANDIN_MODEL, "stream": True}, timeout=30,
                      headers={"Authorization": f"Bearer {key}"}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                times.append(time.monotonic())
    return times


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "close-delimited"])
def test_events_are_relayed_as_they_arrive_like_direct(jupyter, chunked):
    # 40 events 25 ms apart (1 s): fast enough that a proxy batching reads, waiting for a buffer to
    # fill or for the end would bunch them; slow enough that a busy 2-core machine keeps the rhythm.
    events, interval = 40, 0.025
    sent: list[float] = []
    with registered_upstream("paced") as stand_in:
        stand_in._server.RequestHandlerClass = paced_handler(events, interval, chunked, sent)
        runs = {}
        for name, url, key in (("direct", f"{stand_in.url}/v1", "none"), ("proxy", jupyter.proxy_v1("paced"), jupyter.token)):
            sent.clear()
            got = arrivals(url, key)
            assert len(got) == len(sent) == events + 1, (name, len(got), len(sent))
            runs[name] = ([a - s for a, s in zip(got, sent, strict=True)], got[-1] - got[0], sent[-1] - sent[0])
    for name, (lags, spread, sent_spread) in runs.items():
        # A proxy that buffers delivers the first events about 1 s late and all within a few ms.
        assert spread > 0.6 * sent_spread, (name, spread, sent_spread)
        early = sum(lag < 0.25 for lag in lags)
        assert early >= 0.75 * len(lags), (name, sorted(lags))
    direct_lag, proxy_lag = (statistics.median(runs[n][0]) for n in ("direct", "proxy"))
    assert proxy_lag < direct_lag + 0.1, (direct_lag, proxy_lag)  # a hop, not a buffer


def breaking_handler(tail: bytes) -> type[BaseHTTPRequestHandler]:
    """A chunked stream of two events, then ``tail``, then the connection closes (an engine killed)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(2):
                event = f"data: {json.dumps({'choices': [{'index': 0, 'text': f'e{i}'}]})}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.write(tail)
            self.close_connection = True

    return Handler


def test_an_engine_that_dies_between_events_gives_a_clean_end_and_mid_event_a_cut(jupyter):
    with registered_upstream("breaking") as stand_in:
        url = f"{jupyter.proxy_v1('breaking')}/completions"
        headers = {"Authorization": f"Bearer {jupyter.token}"}
        stand_in._server.RequestHandlerClass = breaking_handler(b"")
        with httpx.stream("POST", url, json={"stream": True}, headers=headers, timeout=30) as response:
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert len(lines) == 2  # what came, then a proper end of the answer
        stand_in._server.RequestHandlerClass = breaking_handler(b"40\r\ndata: {\"choi")
        with pytest.raises(httpx.RemoteProtocolError), httpx.stream(
                "POST", url, json={"stream": True}, headers=headers, timeout=30) as response:
            list(response.iter_lines())  # a half event must not look like a whole answer


def _metrics_text(vllm_server) -> str:
    return httpx.get(f"{vllm_server.base_url}/metrics", timeout=10,
                     headers={"Authorization": f"Bearer {vllm_server.api_key}"}).text


def _running(vllm_server) -> int:
    return VllmMetrics.from_text(_metrics_text(vllm_server)).num_requests_running or 0


def _tokens_generated(vllm_server) -> float:
    """vLLM's own count of the tokens it has generated since it started."""
    pattern = re.compile(r"^vllm:generation_tokens_total(?:\{[^}]*\})? (\S+)$", re.M)
    return sum(float(value) for value in pattern.findall(_metrics_text(vllm_server)))


def test_a_client_that_leaves_aborts_the_generation_in_vllm(jupyter, vllm_server):
    body = {"model": vllm_server.served_model_name, "stream": True, "max_tokens": 1500, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Count from one to one thousand in words."}]}
    with httpx.stream("POST", f"{jupyter.proxy_v1(vllm_server.name)}/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {jupyter.token}"}) as response:
        lines = (line for line in response.iter_lines() if line.startswith("data: "))
        for _ in range(5):
            assert next(lines) != "data: [DONE]"
        # The generation is under way (1500 tokens take ~40 s here). vLLM's gauge is set from the
        # engine's step statistics, which can trail the tokens: read on until it shows the request.
        under_way_by = time.monotonic() + 15
        while _running(vllm_server) != 1:
            assert time.monotonic() < under_way_by, "vLLM never showed the streamed request as running"
            assert next(lines) != "data: [DONE]"
    left_at = time.monotonic()
    while _running(vllm_server) != 0:
        assert time.monotonic() - left_at < 10, "vLLM kept generating for a client that left"
        time.sleep(0.1)
    assert time.monotonic() - left_at < 2.0
    # The gauge could read 0 for a moment while the engine still works: its token counter cannot.
    generated = _tokens_generated(vllm_server)
    assert generated >= 4  # the counter is there, and it counted this stream's tokens (5 events: role + 4)
    time.sleep(1.5)  # ~50 tokens at this model's pace on two cores, had the generation gone on
    assert _tokens_generated(vllm_server) == generated


def test_kernel_helpers_find_this_server_and_open_a_terminal(jupyter, vllm_server, monkeypatch):
    from mixvllm_nb.client import openai_client
    from mixvllm_nb.extension.from_kernel import find_jupyter_server, open_terminal, proxy_base_url

    # As in a kernel of that server: same runtime dir, the current folder under its root.
    for name in ("JUPYTER_SERVER_URL", "JUPYTER_TOKEN", "JPY_PARENT_PID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(jupyter.runtime_dir))
    (jupyter.root / "notebooks").mkdir(exist_ok=True)
    monkeypatch.chdir(jupyter.root / "notebooks")
    info = find_jupyter_server()
    assert info["port"] == jupyter.port and info["token"] == jupyter.token
    url, key = proxy_base_url(vllm_server.name)
    assert url == f"http://127.0.0.1:{jupyter.port}/mixvllm/servers/{vllm_server.name}"
    assert [m.id for m in openai_client(url, key).models.list().data] == [vllm_server.served_model_name]
    terminal = open_terminal(vllm_server.name, auto_start_chat=False)
    assert terminal["url"] == f"/terminals/{terminal['name']}"
    assert terminal["cwd"] == str((jupyter.root / "notebooks").resolve())
    listed = httpx.get(f"{jupyter.url}api/terminals", headers={"Authorization": f"token {jupyter.token}"}).json()
    assert terminal["name"] in [t["name"] for t in listed]
    monkeypatch.setenv("JUPYTER_SERVER_URL", jupyter.url)  # a terminal's environment names its server
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(jupyter.root / "no-servers-listed-here"))
    monkeypatch.setenv("JUPYTER_TOKEN", jupyter.token)
    assert find_jupyter_server()["url"] == jupyter.url
    with pytest.raises(RuntimeError, match="nobody"):
        open_terminal("nobody")
