"""A route's cost: time to first token and tokens/s through ``/mixvllm/servers/<route>/v1`` vs the server's own
proxy path, same vLLM server, same Jupyter, one run.

The route has two members: a second, attached server listed first (never asked: its model is not requested)
and the vLLM server, so the route looks past one member before it finds the model. Each of ``--requests``
rounds sends one streamed chat per path, the order alternating from round to round so that machine noise
hits both alike (``ignore_eos``, ``--max-tokens`` tokens, temperature 0). Per request: time to first token
and tokens / seconds from sending to the last token. Then ``--rounds`` rounds of ``--concurrency``
concurrent streams per path: tokens/s of the round. Also the route's own work per request (finding the route
and the member), timed in-process, free of the engine's noise. Targets: route's median time to first token within
1 ms of the proxy's; route's tokens/s at least 0.98x the proxy's. Result: results/routes.json.

    .venv/bin/python benchmarks/routes.py [--requests 20] [--max-tokens 32] [--concurrency 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("MIXVLLM_STATE_DIR", tempfile.mkdtemp(prefix="mixvllm-bench-"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import save  # noqa: E402
from proxy import Route, one_stream, start_jupyter, stop  # noqa: E402

from mixvllm_nb.api import serve  # noqa: E402
from mixvllm_nb.config import ServeConfig  # noqa: E402
from mixvllm_nb.process import registry, routes  # noqa: E402
from mixvllm_nb.process.ports import free_port  # noqa: E402

ROUTE = "bench-route"


def lookup_us(model: str, n: int = 2000) -> list[float]:
    """Return the route's own work per request, in microseconds, timed in this process (no engine noise):
    finding the route and the member whose base model is asked for (what the proxy adds before relaying)."""
    import time

    from mixvllm_nb.extension.routing import _base_models, route_named

    samples = []
    for _ in range(n):
        started = time.perf_counter()
        route = route_named(ROUTE)
        assert route is not None and model in _base_models(route).values()
        samples.append((time.perf_counter() - started) * 1e6)
    return samples


async def measure(paths: list[Route], model: str, args: argparse.Namespace) -> None:
    import httpx

    limits = httpx.Limits(max_connections=args.concurrency * 2, max_keepalive_connections=args.concurrency * 2)
    async with httpx.AsyncClient(timeout=300, limits=limits, trust_env=False) as client:
        for path in paths:  # warm-up: first connections, first prefill
            await one_stream(client, path, model, 4)
        for i in range(args.requests):
            for path in paths if i % 2 == 0 else reversed(paths):
                ttft, total, tokens = await one_stream(client, path, model, args.max_tokens)
                path.add("ttft_ms", ttft * 1000)
                path.add("tokens_per_s", tokens / total)
            print(f"\rsequential {i + 1}/{args.requests}", end="", flush=True)
        print()
        for r in range(args.rounds):
            for path in paths if r % 2 == 0 else reversed(paths):
                started = asyncio.get_running_loop().time()
                results = await asyncio.gather(*(one_stream(client, path, model, args.max_tokens)
                                                 for _ in range(args.concurrency)))
                wall = asyncio.get_running_loop().time() - started
                path.add("concurrent_tokens_per_s", sum(tokens for _, _, tokens in results) / wall)
            print(f"\rconcurrent round {r + 1}/{args.rounds}", end="", flush=True)
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20, help="sequential streamed chats per path")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per answer")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent streams per round")
    parser.add_argument("--rounds", type=int, default=3, help="concurrent rounds per path")
    args = parser.parse_args()

    print("starting vLLM (default model) ...", flush=True)
    result = serve(ServeConfig.model_validate({"server": {"name": "bench-routes"}}), owner_kind="benchmark")
    server = result.server
    other = registry.ServerRecord(name="bench-other", backend="vllm", model="other-model",
                                  served_model_name="other-model", host="127.0.0.1", port=free_port(),
                                  base_url="http://127.0.0.1:1", kind="attached", state="ready")
    registry.save(other)
    routes.set_route(ROUTE, [other.name, server.name])
    lookup = lookup_us(server.served_model_name)
    home = Path(tempfile.mkdtemp(prefix="mixvllm-bench-jupyter-"))
    jupyter, url, token = start_jupyter(home, with_jsp=False)
    try:
        paths = [Route("proxy (server name)", f"{url}mixvllm/servers/{server.name}/v1", token),
                 Route("route (2 servers)", f"{url}mixvllm/servers/{ROUTE}/v1", token)]
        print(f"model {server.served_model_name} at {server.base_url}; Jupyter at {url}", flush=True)
        asyncio.run(measure(paths, server.served_model_name, args))
    finally:
        stop(jupyter)
        routes.remove_route(ROUTE)
        registry.remove(other.name)
        if result.outcome == "Launched":  # never stop a server someone else started
            server.stop()

    proxy, route = paths
    ttft_delta = route.median("ttft_ms") - proxy.median("ttft_ms")
    ratio = route.median("tokens_per_s") / proxy.median("tokens_per_s")
    concurrent = route.median("concurrent_tokens_per_s") / proxy.median("concurrent_tokens_per_s")
    met = {"ttft_within_1ms": ttft_delta <= 1.0, "tokens_per_s_at_least_0.98x": ratio >= 0.98,
           "concurrent_tokens_per_s_at_least_0.98x": concurrent >= 0.98}
    path = save(
        "routes",
        what=f"{args.requests} streamed chats ({args.max_tokens} tokens) per path through a 2-server route vs the "
             f"server's proxy path, interleaved, one vLLM server, then {args.rounds}x{args.concurrency} concurrent",
        result=f"first token {route.median('ttft_ms'):.1f} vs {proxy.median('ttft_ms'):.1f} ms ({ttft_delta:+.1f} ms); "
               f"{ratio:.2f}x tokens/s, {concurrent:.2f}x at {args.concurrency} streams (medians); the route's "
               f"own lookup {statistics.median(lookup):.0f} us",
        samples={**{p.name: p.samples for p in paths}, "route lookup in-process": {"us": lookup}},
        parameters=vars(args),
        extra={"ttft_ms_route_minus_proxy": ttft_delta, "tokens_per_s_ratio": ratio,
               "concurrent_tokens_per_s_ratio": concurrent, "targets_met": met, "model": server.served_model_name},
    )
    for p in paths:
        print(f"{p.name:22} first token {p.median('ttft_ms'):7.1f} ms (min {min(p.samples['ttft_ms']):.1f}); "
              f"tokens/s {p.median('tokens_per_s'):6.1f}; concurrent {p.median('concurrent_tokens_per_s'):6.1f}")
    print(f"route - proxy first token {ttft_delta:+.2f} ms; tokens/s {ratio:.3f}x; concurrent {concurrent:.3f}x; "
          f"targets (1 ms, 0.98x): {met}")
    print(f"the route's own lookup per request: median {statistics.median(lookup):.0f} us, max {max(lookup):.0f} us")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
