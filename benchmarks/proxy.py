"""Streaming through Jupyter: direct vs our proxy vs jupyter-server-proxy (when installed), saved as JSON.

``synthetic`` (no vLLM): the proxy's own ceiling. A synthetic upstream in its own process streams
``--events`` server-sent events (vLLM-shaped chat chunks, one HTTP/1.1 chunk and one write each, keep-alive:
as uvicorn frames vLLM's streams) as fast as it can, back to its event loop between events as a server
streaming a generator does (``--burst``: all in one go; they pile up in the socket). Each path runs one
stream per round, interleaved (direct, ours, jsp; then ours, jsp, direct; ...) so that machine noise hits every
path alike and no path always runs first or after the same one.
The client is a bare socket that counts events, far cheaper per event than any path. Reports events/s
(events over the time from the request to ``[DONE]``), time to first event, and the relay's own rate (events/s
after the first event: a stream lasts ~20 ms, so the first event's delay weighs in events/s). Targets: ours at least 0.9x
direct's events/s and at least jupyter-server-proxy's, first event within 5 ms of direct's.
Result: results/proxy_synthetic.json (results/proxy_synthetic_burst.json).

``vllm``: on one real vLLM server, ``--requests`` streamed chats each way, then ``--concurrency``
concurrent streams per path, the order rotating each round as above. Time to first token is compared by the
median of the paired differences (each round's path minus the same round's direct). Targets: time to first token
within 10 ms of direct; at 32 streams at least 0.95x direct's tokens/s. Result: results/proxy_vllm.json.

Every request asks for ``Accept: text/event-stream``: jupyter-server-proxy streams only for exactly that
header (it buffers whole answers otherwise); ours streams whatever the header.

    .venv/bin/python benchmarks/proxy.py synthetic [--rounds 40] [--events 2000] [--burst]
    .venv/bin/python benchmarks/proxy.py vllm [--requests 20] [--concurrency 32] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import json
import os
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

from _results import save as save_result

os.environ.setdefault("MIXVLLM_STATE_DIR", tempfile.mkdtemp(prefix="mixvllm-bench-"))

QUESTION = "Write a short paragraph about the history of Paris."


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


def wait_until(ready: Any, what: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        if ready():
            return
        time.sleep(0.1)
    process.terminate()
    raise RuntimeError(f"{what} did not start within {timeout} s")


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

    wait_until(ready, "jupyter server", process)
    return process, url, token


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def save(name: str, args: argparse.Namespace, routes: list[Route], *, what: str, result: str,
         extra: dict[str, Any]) -> Path:
    """Write the run to ``results/<name>.json`` through ``_results.save`` (the README's table reads it)."""
    parameters = {k: v for k, v in vars(args).items() if k != "mode"}
    return save_result(name, title=f"`proxy.py {args.mode}{' --burst' if getattr(args, 'burst', False) else ''}`",
                       what=what, result=result, samples={route.name: route.samples for route in routes},
                       parameters=parameters, extra=extra)


def versus(ratios: dict[str, dict[str, float]], rate_key: str, first_key: str, path: str) -> str:
    """Return ``0.96x, +8.2 ms`` for one path, or ``not installed`` when the run had no such path."""
    if path not in ratios:
        return "not installed"
    return f"{ratios[path][rate_key]:.2f}x, {ratios[path][first_key]:+.1f} ms"


def jsp_route(url: str, port: int, key: str, token: str) -> Route:
    # jupyter-server-proxy passes the client's Authorization through, so one header cannot carry both
    # the Jupyter token and the server's key: the token goes in the query, the key in the header.
    return Route("jupyter-server-proxy", f"{url}proxy/{port}/v1", key, f"?token={token}")


# ---------------------------------------------------------------- the two modes

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


def rotated(paths: list[Route], turn: int) -> list[Route]:
    """Return the paths in this turn's order (direct, ours, jsp; then ours, jsp, direct; ...)."""
    shift = turn % len(paths)
    return paths[shift:] + paths[:shift]


def paired_difference(path: Route, direct: Route, metric: str) -> float:
    """Return the median of the per-round differences ``path - direct`` (each round ran both back to back)."""
    return statistics.median(a - b for a, b in zip(path.samples[metric], direct.samples[metric], strict=True))


async def run_vllm(paths: list[Route], model: str, args: argparse.Namespace) -> None:
    import httpx

    limits = httpx.Limits(max_connections=args.concurrency * 2, max_keepalive_connections=args.concurrency * 2)
    async with httpx.AsyncClient(timeout=300, limits=limits, trust_env=False) as client:
        for path in paths:  # warm-up: first connections, first prefill
            await one_stream(client, path, model, 4)
        for i in range(args.requests):
            for path in rotated(paths, i):
                ttft, total, _ = await one_stream(client, path, model, args.max_tokens)
                path.add("ttft_ms", ttft * 1000)
                path.add("total_ms", total * 1000)
            print(f"\rsequential {i + 1}/{args.requests}", end="", flush=True)
        print()
        for r in range(args.rounds):
            for path in rotated(paths, r):
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
          f"then {args.rounds} round(s) of {args.concurrency} concurrent streams, the order rotating; medians, "
          f"and the median of the paired (same round) TTFT differences from direct")
    print(f"{'path':22} {'TTFT ms':>8} {'paired':>7} {'total ms':>9} {'wall s':>7} {'tok/s':>8} {'vs direct':>9}")
    ratios = {}
    for path in paths:
        rate = path.median("concurrent_tokens_per_s")
        # On 2 cores TTFT is bimodal for every path (each mode tens of ms apart), so a difference of
        # medians can land on different modes; the paired differences compare requests run side by side.
        ratios[path.name] = {"tokens_per_s_vs_direct": rate / direct.median("concurrent_tokens_per_s"),
                             "ttft_ms_minus_direct": paired_difference(path, direct, "ttft_ms"),
                             "ttft_median_ms_minus_direct_median": path.median("ttft_ms") - direct.median("ttft_ms")}
        print(f"{path.name:22} {path.median('ttft_ms'):8.1f} {ratios[path.name]['ttft_ms_minus_direct']:+7.1f} "
              f"{path.median('total_ms'):9.1f} {path.median('concurrent_wall_s'):7.2f} {rate:8.1f} "
              f"{ratios[path.name]['tokens_per_s_vs_direct']:8.2f}x")
    if not jsp_installed:
        print(f"{'jupyter-server-proxy':22} not installed")
    print("targets: ours' TTFT within 10 ms of direct's; at least 0.95x direct's tokens/s at concurrency")
    ours = ratios["mixvllm proxy"]
    met = ours["ttft_ms_minus_direct"] <= 10 and ours["tokens_per_s_vs_direct"] >= 0.95
    result = (f"mixvllm proxy {versus(ratios, 'tokens_per_s_vs_direct', 'ttft_ms_minus_direct', 'mixvllm proxy')}; "
              f"jupyter-server-proxy {versus(ratios, 'tokens_per_s_vs_direct', 'ttft_ms_minus_direct', 'jupyter-server-proxy')}"
              f" (tokens/s at {args.concurrency} streams vs direct, first token vs direct: median paired difference); "
              f"target >= 0.95x and +10 ms: {'met' if met else 'missed'}")
    what = (f"one real vLLM server: {args.requests} streamed chats per path ({args.max_tokens} tokens), then "
            f"{args.concurrency} concurrent streams; direct vs our proxy vs jupyter-server-proxy (streaming mode)")
    print(f"saved {save('proxy_vllm', args, paths, what=what, result=result, extra={'medians_vs_direct': ratios})}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    synth = modes.add_parser("synthetic", help="the proxy's ceiling against a fast synthetic upstream (no vLLM)")
    synth.add_argument("--rounds", type=int, default=40, help="interleaved streams per path")
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
    if args.mode == "vllm":
        vllm(args)
        return
    sys.modules.setdefault("proxy", sys.modules[__name__])  # proxy_synthetic imports this module's helpers
    import proxy_synthetic

    if args.mode == "upstream":
        asyncio.run(proxy_synthetic.serve_synthetic(args.port, args.events, args.burst))
    else:
        proxy_synthetic.synthetic(args)


if __name__ == "__main__":
    main()
