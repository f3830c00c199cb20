"""A serving benchmark: sweep concurrency against a running server and measure what users feel.

Each level runs ``concurrency`` streams at once through the ``openai`` client (the same path a
user takes, direct or through the Jupyter proxy) and records, per request, the time to first
token, the gaps between tokens and the output token count. Interrupting keeps finished levels.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .client import request_params
from .display import Table

PROMPTS = [
    "Explain in a few sentences why the sky is blue.",
    "Write a short poem about the sea.",
    "List five fruits and one fact about each.",
    "Describe how a bicycle works.",
    "What are the benefits of reading books?",
    "Give three tips for learning a new language.",
    "Summarise the water cycle for a child.",
    "Why do cats purr?",
]


@dataclass
class RequestTiming:
    """One streamed request: when its first token came, the gaps between tokens, how many tokens."""

    ttft: float
    itl: list[float]
    output_tokens: int
    total: float


@dataclass
class LevelResult:
    """The figures of one concurrency level."""

    concurrency: int
    requests: int
    wall_s: float
    requests_per_s: float
    output_tokens_per_s: float
    ttft_median_ms: float
    ttft_p95_ms: float
    itl_median_ms: float

    def as_dict(self) -> dict[str, Any]:
        """Return the level as a flat dict (DataFrame-friendly)."""
        return dict(self.__dict__)


@dataclass
class BenchResult:
    """All measured levels, the path measured (direct or proxy), and whether it was interrupted."""

    path: str
    levels: list[LevelResult] = field(default_factory=list)
    interrupted: bool = False

    def records(self) -> list[dict[str, Any]]:
        """Return one dict per level (``pandas.DataFrame(result.records())`` works)."""
        return [level.as_dict() for level in self.levels]

    def table(self) -> Table:
        """Return the levels as a table (HTML in Jupyter, text elsewhere)."""
        columns = ["concurrency", "requests", "req/s", "output tok/s", "TTFT median ms", "TTFT p95 ms", "ITL median ms"]
        rows = [[lv.concurrency, lv.requests, round(lv.requests_per_s, 2), round(lv.output_tokens_per_s, 1),
                 round(lv.ttft_median_ms), round(lv.ttft_p95_ms), round(lv.itl_median_ms, 1)] for lv in self.levels]
        note = " (interrupted)" if self.interrupted else ""
        return Table(columns, rows, title=f"serving benchmark via {self.path}{note}")

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()

    def __repr__(self) -> str:
        return repr(self.table())

    def plot(self, axes: Any = None) -> Any:
        """Plot throughput and time to first token against concurrency; return the axes."""
        import matplotlib.pyplot as plt

        if axes is None:
            _, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        x = [lv.concurrency for lv in self.levels]
        axes[0].plot(x, [lv.output_tokens_per_s for lv in self.levels], marker="o")
        axes[0].set(xlabel="concurrent streams", ylabel="output tokens/s", title="throughput", xscale="log", xticks=x)
        axes[0].set_xticklabels([str(v) for v in x])
        axes[1].plot(x, [lv.ttft_median_ms for lv in self.levels], marker="o", label="median")
        axes[1].plot(x, [lv.ttft_p95_ms for lv in self.levels], marker="o", label="p95")
        axes[1].set(xlabel="concurrent streams", ylabel="ms", title="time to first token", xscale="log", xticks=x)
        axes[1].set_xticklabels([str(v) for v in x])
        axes[1].legend()
        return axes


def percentile(values: list[float], q: float) -> float:
    """Return the q-th percentile (0-100) with linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def _one_request(client: Any, model: str, prompt: str, params: dict[str, Any], stop: threading.Event) -> RequestTiming:
    started = time.perf_counter()
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], stream=True,
        stream_options={"include_usage": True}, **request_params(params),
    )
    stamps: list[float] = []
    tokens = 0
    try:
        for chunk in stream:
            if stop.is_set():
                break
            if chunk.choices and chunk.choices[0].delta.content:
                stamps.append(time.perf_counter())
            if getattr(chunk, "usage", None):
                tokens = chunk.usage.completion_tokens
    finally:
        stream.close()
    total = time.perf_counter() - started
    ttft = (stamps[0] - started) if stamps else total
    return RequestTiming(ttft, [b - a for a, b in zip(stamps, stamps[1:], strict=False)], tokens or len(stamps), total)


def run_level(client: Any, model: str, concurrency: int, requests: int, params: dict[str, Any],
              stop: threading.Event) -> LevelResult:
    """Run ``requests`` streamed chats, ``concurrency`` at a time; return the level's figures."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(requests)]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        try:
            timings = list(pool.map(lambda p: _one_request(client, model, p, params, stop), prompts))
        except BaseException:
            stop.set()  # the pool waits for its threads on exit: make them end at their next token
            raise
    wall = time.perf_counter() - started
    ttfts = [t.ttft * 1000 for t in timings]
    gaps = [gap * 1000 for t in timings for gap in t.itl]
    return LevelResult(
        concurrency=concurrency,
        requests=len(timings),
        wall_s=wall,
        requests_per_s=len(timings) / wall,
        output_tokens_per_s=sum(t.output_tokens for t in timings) / wall,
        ttft_median_ms=statistics.median(ttfts),
        ttft_p95_ms=percentile(ttfts, 95),
        itl_median_ms=statistics.median(gaps) if gaps else float("nan"),
    )


def bench(
    base_url: str,
    api_key: str,
    model: str,
    *,
    levels: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
    requests_per_level: Callable[[int], int] = lambda c: max(4, 2 * c),
    max_tokens: int = 64,
    temperature: float = 0.0,
    path: str = "direct",
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Sweep concurrency levels against an OpenAI-compatible server; Ctrl+C keeps finished levels."""
    from .client import openai_client

    client = openai_client(base_url, api_key).with_options(max_retries=0)  # a retry would skew timings
    result = BenchResult(path=path)
    stop = threading.Event()
    params = {"max_tokens": max_tokens, "temperature": temperature}
    try:
        for concurrency in levels:
            if progress:
                progress(f"measuring {concurrency} concurrent stream(s) ...")
            result.levels.append(run_level(client, model, concurrency, requests_per_level(concurrency), params, stop))
            if progress:
                last = result.levels[-1]
                progress(f"{concurrency} stream(s): {last.output_tokens_per_s:.1f} tokens/s, "
                         f"TTFT median {last.ttft_median_ms:.0f} ms")
    except KeyboardInterrupt:
        result.interrupted = True  # the level in flight is dropped; finished levels are kept
    return result
