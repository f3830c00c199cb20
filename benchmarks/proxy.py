"""Streaming through Jupyter: direct to vLLM vs our proxy (vs jupyter-server-proxy when installed).

On one vLLM server, interleaved (direct, ours, [jsp], direct, ours, ...) so that machine noise hits
every path alike: ``--requests`` streamed chats each way, then ``--concurrency`` concurrent streams
per path. Prints the median time to first token and total time, and the wall time and tokens/s at
concurrency. Targets: our time to first token within 10 ms of direct; at 32 streams at least 0.95x
direct's tokens/s.

    .venv/bin/python benchmarks/proxy.py [--requests 20] [--concurrency 32] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("MIXVLLM_STATE_DIR", tempfile.mkdtemp(prefix="mixvllm-bench-"))

import httpx  # noqa: E402

from mixvllm_nb.api import serve  # noqa: E402
from mixvllm_nb.config import ServeConfig  # noqa: E402
from mixvllm_nb.process.ports import free_port  # noqa: E402

QUESTION = "Write a short paragraph about the history of Paris."


@dataclass
class Route:
    """One way to reach the server: an OpenAI ``/v1`` URL and the key it takes."""

    name: str
    v1: str
    key: str
    query: str = ""
    ttft: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)


def start_jupyter(home: Path, with_jsp: bool) -> tuple[subprocess.Popen, str, str]:
    """Start ``jupyter server`` with our extension (and jupyter-server-proxy if asked); return it, URL, token."""
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
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(f"{url}api/status", headers={"Authorization": f"token {token}"})
            with urllib.request.urlopen(request, timeout=2):
                return process, url, token
        except OSError:
            time.sleep(0.2)
    process.terminate()
    raise RuntimeError("jupyter server did not start within 60 s")


async def one_stream(client: httpx.AsyncClient, path: Route, model: str, max_tokens: int) -> tuple[float, float, int]:
    """Run one streamed chat; return (time to first token, total time, tokens received)."""
    body = {"model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "messages": [{"role": "user", "content": QUESTION}]}
    started = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", f"{path.v1}/chat/completions{path.query}", json=body,
                             headers={"Authorization": f"Bearer {path.key}"}) as response:
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


async def run(paths: list[Route], model: str, requests: int, concurrency: int, max_tokens: int, rounds: int) -> None:
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=300, limits=limits, trust_env=False) as client:
        for path in paths:  # warm-up: first connections, first prefill
            await one_stream(client, path, model, 4)
        for i in range(requests):
            for path in paths:
                ttft, total, _ = await one_stream(client, path, model, max_tokens)
                path.ttft.append(ttft)
                path.total.append(total)
            print(f"\rsequential {i + 1}/{requests}", end="", flush=True)
        print()
        for r in range(rounds):
            for path in paths:
                started = time.perf_counter()
                results = await asyncio.gather(*(one_stream(client, path, model, max_tokens)
                                                 for _ in range(concurrency)))
                wall = time.perf_counter() - started
                path.walls.append(wall)
                path.rates.append(sum(tokens for _, _, tokens in results) / wall)
            print(f"\rconcurrent round {r + 1}/{rounds}", end="", flush=True)
        print()


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:8.1f}"


def report(paths: list[Route], jsp_installed: bool, args: argparse.Namespace) -> None:
    direct = paths[0]
    print(f"\n{args.requests} sequential streamed chats per path ({args.max_tokens} tokens), "
          f"then {args.rounds} round(s) of {args.concurrency} concurrent streams; medians")
    print(f"{'path':28} {'TTFT ms':>8} {'total ms':>9} {'wall s @' + str(args.concurrency):>10} "
          f"{'tok/s @' + str(args.concurrency):>10} {'vs direct':>9}")
    for path in paths:
        rate = statistics.median(path.rates)
        print(f"{path.name:28} {ms(path.ttft)} {ms(path.total):>9} {statistics.median(path.walls):10.2f} "
              f"{rate:10.1f} {rate / statistics.median(direct.rates):8.2f}x")
    if not jsp_installed:
        print(f"{'jupyter-server-proxy':28} not installed")
    ours = paths[1]
    dt = (statistics.median(ours.ttft) - statistics.median(direct.ttft)) * 1000
    ratio = statistics.median(ours.rates) / statistics.median(direct.rates)
    print(f"\nours - direct, time to first token: {dt:+.1f} ms (target: within 10 ms)")
    print(f"ours / direct, tokens/s at {args.concurrency} streams: {ratio:.3f} (target: at least 0.95)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20, help="sequential streamed chats per path")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent streams per round")
    parser.add_argument("--rounds", type=int, default=3, help="concurrent rounds per path")
    parser.add_argument("--max-tokens", type=int, default=48, help="tokens per answer")
    args = parser.parse_args()

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
            # jupyter-server-proxy passes the client's Authorization through, so one header cannot carry both
            # the Jupyter token and the server's key: the token goes in the query, the key in the header.
            paths.append(Route("jupyter-server-proxy", f"{url}proxy/{server.port}/v1", server.api_key, f"?token={token}"))
        print(f"model {server.served_model_name} at {server.base_url}; Jupyter at {url}", flush=True)
        asyncio.run(run(paths, server.served_model_name, args.requests, args.concurrency, args.max_tokens,
                        args.rounds))
        report(paths, jsp_installed, args)
    finally:
        jupyter.terminate()
        jupyter.wait(timeout=30)
        if result.outcome == "Launched":  # never stop a server someone else started
            server.stop()


if __name__ == "__main__":
    main()
