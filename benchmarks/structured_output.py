"""Structured output's cost: tokens/s with a JSON schema against free text, same prompts, one vLLM server.

Each round sends every prompt twice, once free and once constrained to a JSON schema (vLLM's
``structured_outputs: {"json": ...}``), streamed one at a time, the order of the two alternating from
round to round so that machine noise hits both alike. Both ask for the same ``--max-tokens`` at
temperature 0. Per request: completion tokens / seconds from sending to the last token (tokens/s), and
time to first token. One request of each kind before the rounds warms up (the schema's grammar is compiled
on its first use; that first time is reported apart). No target: the figure is reported.
Result: results/structured_output.json.

    .venv/bin/python benchmarks/structured_output.py [--rounds 3] [--prompts 4] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("MIXVLLM_STATE_DIR", tempfile.mkdtemp(prefix="mixvllm-bench-"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import save  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from mixvllm_nb.api import serve  # noqa: E402
from mixvllm_nb.client import StreamStats, openai_client, stream_chat  # noqa: E402
from mixvllm_nb.config import ServeConfig  # noqa: E402
from mixvllm_nb.structured import output_format, request_keywords  # noqa: E402

TOPICS = ["Paris", "the Moon", "the Python programming language", "the Amazon river", "honey bees",
          "the violin", "Mount Everest", "the printing press"]


class Description(BaseModel):
    """What the constrained answers must be."""

    topic: str
    summary: str
    facts: list[str]


def prompt(topic: str) -> str:
    return f"Describe {topic}: a one-sentence summary and three facts, as JSON with topic, summary and facts."


def one(client: Any, model: str, text: str, max_tokens: int, extra: dict[str, Any]) -> StreamStats:
    """Stream one answer to the end and return what it cost."""
    stats = StreamStats()
    for _ in stream_chat(client, model, [{"role": "user", "content": text}], stats=stats, temperature=0.0,
                         max_tokens=max_tokens, **extra):
        pass
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all prompts")
    parser.add_argument("--prompts", type=int, default=4, help=f"how many prompts (at most {len(TOPICS)})")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per answer at most")
    args = parser.parse_args()

    print("starting vLLM (default model) ...", flush=True)
    result = serve(ServeConfig.model_validate({"server": {"name": "bench-structured"}}), owner_kind="benchmark")
    server = result.server
    modes = {"free text": {},
             "JSON schema": request_keywords(output_format(json_schema=Description), server.backend_name, "chat")}
    samples: dict[str, dict[str, list[float]]] = {m: {"tokens_per_s": [], "first_token_ms": [], "completion_tokens": []}
                                                  for m in modes}
    finish: dict[str, dict[str, int]] = {m: {} for m in modes}
    warmup: dict[str, dict[str, float]] = {}
    try:
        client = openai_client(server.base_url, server.api_key)
        model = server.served_model_name
        for mode, extra in modes.items():
            stats = one(client, model, prompt("the sea"), args.max_tokens, extra)
            warmup[mode] = {"elapsed_s": round(stats.elapsed_s, 4),
                            "first_token_ms": round((stats.first_piece_s or 0) * 1000, 1)}
        topics = TOPICS[: args.prompts]
        for r in range(args.rounds):
            for i, topic in enumerate(topics):
                order = list(modes) if (r + i) % 2 == 0 else list(reversed(modes))
                for mode in order:
                    stats = one(client, model, prompt(topic), args.max_tokens, modes[mode])
                    tokens = stats.usage["completion_tokens"] if stats.usage else stats.pieces
                    samples[mode]["tokens_per_s"].append(tokens / stats.elapsed_s)
                    samples[mode]["first_token_ms"].append((stats.first_piece_s or 0) * 1000)
                    samples[mode]["completion_tokens"].append(tokens)
                    finish[mode][str(stats.finish_reason)] = finish[mode].get(str(stats.finish_reason), 0) + 1
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    finally:
        if result.outcome == "Launched":  # never stop a server someone else started
            server.stop()

    free = statistics.median(samples["free text"]["tokens_per_s"])
    schema = statistics.median(samples["JSON schema"]["tokens_per_s"])
    ttft_free = statistics.median(samples["free text"]["first_token_ms"])
    ttft_schema = statistics.median(samples["JSON schema"]["first_token_ms"])
    n = len(samples["free text"]["tokens_per_s"])
    path = save(
        "structured_output",
        what=f"tokens/s of {n} streamed chats with a JSON schema vs free text, same prompts, one vLLM server, "
             f"interleaved, max_tokens {args.max_tokens}",
        result=f"JSON schema {schema:.1f} tokens/s vs free text {free:.1f} ({schema / free:.2f}x); first token "
               f"{ttft_schema:.0f} vs {ttft_free:.0f} ms (medians)",
        samples=samples,
        parameters=vars(args),
        extra={"ratio_tokens_per_s": schema / free, "finish_reasons": finish, "warmup_first_request": warmup,
               "model": server.served_model_name, "engine": result.engine},
    )
    for mode, metrics in samples.items():
        print(f"{mode:12s} tokens/s median {statistics.median(metrics['tokens_per_s']):6.1f} "
              f"(min {min(metrics['tokens_per_s']):.1f}, max {max(metrics['tokens_per_s']):.1f}); "
              f"first token median {statistics.median(metrics['first_token_ms']):.0f} ms; finish {finish[mode]}")
    print(f"warm-up (first request of each kind): {warmup}")
    print(f"ratio JSON schema / free text: {schema / free:.2f}x; saved {path}")


if __name__ == "__main__":
    main()
