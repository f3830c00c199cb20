"""The synthetic mode of benchmarks/proxy.py: a fast upstream in its own process, a cheap client, the run.

Run it as ``.venv/bin/python benchmarks/proxy.py synthetic`` (see that file's docstring).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from proxy import Route, jsp_route, save, start_jupyter, stop, versus, wait_until

# ---------------------------------------------------------------- the synthetic upstream (its own process)

def sse_event(i: int) -> bytes:
    """Return one vLLM-shaped chat chunk as a server-sent event."""
    chunk = {"id": "chatcmpl-synthetic", "object": "chat.completion.chunk", "created": 0, "model": "synthetic",
             "choices": [{"index": 0, "delta": {"content": f"tok{i} "}, "logprobs": None, "finish_reason": None}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


async def serve_synthetic(port: int, events: int, burst: bool = False) -> None:
    """Answer every request with ``events`` server-sent events, each its own HTTP chunk and write, at once."""
    frames = [b"%x\r\n%s\r\n" % (len(e), e) for e in (*map(sse_event, range(events)), b"data: [DONE]\n\n")]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive, as uvicorn (vLLM's server) does, until the client says close
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.lower().split(b"\r\n")
                for line in lines:
                    if line.startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":", 1)[1]))
                close = b"connection: close" in lines
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                             b"transfer-encoding: chunked\r\n" + (b"connection: close\r\n" if close else b"") + b"\r\n")
                for frame in frames:  # one write (one send) per event, as an engine emits them
                    writer.write(frame)
                    await writer.drain()
                    if not burst:
                        await asyncio.sleep(0)  # back to the loop between events, as a server streaming a generator
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                if close:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", port, backlog=256)
    async with server:
        await server.serve_forever()


def start_synthetic(events: int, burst: bool = False) -> tuple[subprocess.Popen, int]:
    """Start the synthetic upstream in its own process; return it and its port once it listens."""
    from mixvllm_nb.process.ports import free_port

    port = free_port()
    command = [sys.executable, str(Path(__file__).with_name("proxy.py")), "upstream", "--port", str(port), "--events", str(events)]
    process = subprocess.Popen(command + (["--burst"] if burst else []), start_new_session=True)
    wait_until(lambda: _listening(port), "synthetic upstream", process)
    return process, port


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0



# ---------------------------------------------------------------- the client: raw HTTP, cheap per event

class Dechunker:
    """Undo HTTP/1.1 chunked framing incrementally (a proxy re-frames, so a frame can split an event)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.left = 0  # payload bytes left in the current chunk; -1: its closing CRLF is next
        self.ended = False

    def feed(self, data: bytes) -> bytes:
        """Return the payload in ``data`` (and in what earlier calls kept back)."""
        buffer, out, pos = self.buffer + data, [], 0
        while not self.ended:
            if self.left > 0:
                piece = buffer[pos:pos + self.left]
                out.append(piece)
                self.left -= len(piece)
                pos += len(piece)
                if self.left:
                    break
                self.left = -1
            if self.left < 0:
                if len(buffer) - pos < 2:
                    break
                pos, self.left = pos + 2, 0
            end = buffer.find(b"\r\n", pos)
            if end < 0:
                break
            self.left = int(buffer[pos:end].split(b";")[0], 16)
            self.ended = self.left == 0
            pos = end + 2
        self.buffer = buffer[pos:]
        return b"".join(out)


async def raw_stream(route: Route, body: bytes) -> tuple[float, float, int]:
    """POST a streamed chat on a bare socket; return (time to first event, time to [DONE], events).

    The client only counts ``data: `` markers (no JSON, no HTTP library), so that its own cost per
    event stays far below any path's: it shares the machine with the upstream and Jupyter.
    """
    url = urllib.parse.urlsplit(f"{route.v1}/chat/completions{route.query}")
    target = f"{url.path}?{url.query}" if url.query else url.path
    head = (f"POST {target} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {route.key}\r\n"
            f"Accept: text/event-stream\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(head + body)
    status = await reader.readuntil(b"\r\n\r\n")
    if not status.startswith(b"HTTP/1.1 200"):
        detail = await asyncio.wait_for(reader.read(2000), 5)
        raise RuntimeError(f"{route.name}: {status.decode(errors='replace').splitlines()[0]}: {detail[:500]!r}")
    chunked = b"transfer-encoding: chunked" in status.lower()
    dechunk = Dechunker()
    first = done = None
    count = 0
    tail = b""  # the end of the last read: a marker may be split across reads
    while done is None:
        data = await reader.read(1 << 16)
        if not data:
            break
        if chunked:
            data = dechunk.feed(data)
        seen = (tail[-5:] + data).count(b"data: ")  # 5 bytes: part of a marker, never a whole one
        if seen and first is None:
            first = time.perf_counter() - started
        count += seen
        if b"data: [DONE]" in tail + data:
            done = time.perf_counter() - started
        tail = (tail + data)[-11:]
    writer.close()
    if first is None or done is None:
        raise RuntimeError(f"{route.name}: the stream ended after {count} events without [DONE]")
    return first, done, count - 1  # [DONE] is no event


async def run_synthetic(routes: list[Route], rounds: int, events: int) -> None:
    body = json.dumps({"model": "synthetic", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    for route in routes:  # warm-up: imports, first connections
        for _ in range(2):
            await raw_stream(route, body)
    for r in range(rounds):
        # Each round starts with the next path: the path that follows another (a Jupyter idle meanwhile, an
        # upstream just done streaming) changes every round, so no path always comes first or after the same one.
        for route in routes[r % len(routes):] + routes[:r % len(routes)]:
            first, total, count = await raw_stream(route, body)
            if count != events:
                raise RuntimeError(f"{route.name}: {count} events instead of {events}")
            route.add("first_event_ms", first * 1000)
            route.add("total_ms", total * 1000)
            route.add("events_per_s", count / total)
            # The relay's own rate: a 2000-event stream lasts ~20 ms, so a few ms before the first event weigh
            # in events_per_s; this one leaves them out.
            route.add("events_per_s_after_first_event", count / (total - first))
        print(f"\rround {r + 1}/{rounds}", end="", flush=True)
    print()


def synthetic(args: argparse.Namespace) -> None:
    from mixvllm_nb.process import registry

    jsp_installed = importlib.util.find_spec("jupyter_server_proxy") is not None
    upstream, port = start_synthetic(args.events, args.burst)
    home = Path(tempfile.mkdtemp(prefix="mixvllm-bench-jupyter-"))
    name = f"synthetic-{port}"
    registry.save(registry.ServerRecord(name=name, backend="vllm", model="synthetic", served_model_name="synthetic",
                                        host="127.0.0.1", port=port, base_url=f"http://127.0.0.1:{port}",
                                        kind="attached", state="ready"))
    jupyter = None
    try:
        jupyter, url, token = start_jupyter(home, jsp_installed)
        routes = [Route("direct", f"http://127.0.0.1:{port}/v1", ""),
                  Route("mixvllm proxy", f"{url}mixvllm/servers/{name}/v1", token)]
        if jsp_installed:
            routes.append(jsp_route(url, port, "", token))
        print(f"{args.events} events per stream, {args.rounds} interleaved rounds; os.cpu_count() {os.cpu_count()}")
        asyncio.run(run_synthetic(routes, args.rounds, args.events))
    finally:
        if jupyter is not None:
            stop(jupyter)
        stop(upstream)
        registry.remove(name)
    direct = routes[0]
    print(f"\n{'path':22} {'events/s':>9} {'p25-p75':>15} {'vs direct':>9} {'1st event ms':>12} {'p25-p75':>13} "
          f"{'- direct':>9}")
    ratios, spreads = {}, {}
    for route in routes:
        rate, first = route.median("events_per_s"), route.median("first_event_ms")
        ratios[route.name] = {"events_per_s_vs_direct": rate / direct.median("events_per_s"),
                              "first_event_ms_minus_direct": first - direct.median("first_event_ms"),
                              "events_per_s_after_first_event_vs_direct": route.median(
                                  "events_per_s_after_first_event") / direct.median("events_per_s_after_first_event")}
        spreads[route.name] = {metric: quartiles(route.samples[metric]) for metric in ("events_per_s", "first_event_ms")}
        (r25, r75), (f25, f75) = spreads[route.name]["events_per_s"], spreads[route.name]["first_event_ms"]
        print(f"{route.name:22} {rate:9.0f} {r25:7.0f}-{r75:<7.0f} {ratios[route.name]['events_per_s_vs_direct']:8.2f}x "
              f"{first:12.2f} {f25:6.2f}-{f75:<6.2f} {ratios[route.name]['first_event_ms_minus_direct']:+9.2f}")
    after = {route.name: route.median("events_per_s_after_first_event") for route in routes}
    print("events/s after the first event (the relay's own rate), vs direct: "
          + ", ".join(f"{name} {rate / after['direct']:.2f}x" for name, rate in after.items()))
    if not jsp_installed:
        print(f"{'jupyter-server-proxy':22} not installed (pip install jupyter-server-proxy)")
    print("targets: ours >= 0.9x direct's events/s and >= jupyter-server-proxy's; first event within 5 ms of direct's")
    name = "proxy_synthetic_burst" if args.burst else "proxy_synthetic"
    ours = ratios["mixvllm proxy"]
    met = (ours["events_per_s_vs_direct"] >= 0.9 and ours["first_event_ms_minus_direct"] <= 5
           and ours["events_per_s_vs_direct"] >= ratios.get("jupyter-server-proxy", ours)["events_per_s_vs_direct"])
    what = (f"the proxy's own ceiling: {args.events} server-sent events per stream from a synthetic upstream as fast as "
            f"it sends them{' (all at once)' if args.burst else ''}, {args.rounds} interleaved rounds (each starting with the "
            "next path); direct vs our proxy vs jupyter-server-proxy (streaming mode); medians, quartiles in the file")
    result = (f"mixvllm proxy {versus(ratios, 'events_per_s_vs_direct', 'first_event_ms_minus_direct', 'mixvllm proxy')}"
              f"; jupyter-server-proxy "
              f"{versus(ratios, 'events_per_s_vs_direct', 'first_event_ms_minus_direct', 'jupyter-server-proxy')} "
              f"(events/s vs direct, first event vs direct); target >= 0.9x, >= jupyter-server-proxy's and +5 ms: "
              f"{'met' if met else 'missed'}")
    extra = {"medians_vs_direct": ratios, "quartiles": spreads}
    print(f"saved {save(name, args, routes, what=what, result=result, extra=extra)}")


def quartiles(samples: list[float]) -> tuple[float, float]:
    """Return the 25th and 75th percentiles: the spread a median hides (this machine's noise is milliseconds)."""
    q = statistics.quantiles(samples, n=4)
    return q[0], q[2]
