"""Continuous batching on one vLLM server: ``%vllm_bench``'s concurrency sweep, repeated, orders alternating.

Starts the default model (SmolLM2 on the CPU build here) and runs ``mixvllm_nb.bench.bench`` over
``--levels`` ``--repeats`` times, in rising then falling order in turn, so that a change in how busy the
machine is hits every level alike. Reports per level the output tokens/s and the median time to first
token and inter-token latency (medians over the repeats), and the gain of the highest level over one
stream. Result: results/serving.json.

    .venv/bin/python benchmarks/serving.py [--levels 1,2,4,8] [--max-tokens 48] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

os.environ.setdefault("MIXVLLM_STATE_DIR", tempfile.mkdtemp(prefix="mixvllm-bench-"))

from _results import save  # noqa: E402

from mixvllm_nb.api import serve  # noqa: E402
from mixvllm_nb.bench import bench  # noqa: E402
from mixvllm_nb.config import ServeConfig  # noqa: E402

METRICS = ("output_tokens_per_s", "ttft_median_ms", "itl_median_ms", "requests_per_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,2,4,8", help="comma-separated concurrency levels")
    parser.add_argument("--max-tokens", type=int, default=48, help="tokens per answer")
    parser.add_argument("--repeats", type=int, default=3, help="sweeps, in alternating order")
    args = parser.parse_args()
    levels = tuple(sorted(int(level) for level in args.levels.split(",")))
    config = ServeConfig.model_validate({"backend": "vllm", "server": {"name": "bench-serving"},
                                         "generation_defaults": {"temperature": 0.0}})
    print("starting vLLM (default model) ...", flush=True)
    result = serve(config, owner_kind="benchmark")
    server = result.server
    samples: dict[str, dict[str, list[float]]] = {f"{level} stream(s)": {m: [] for m in METRICS} for level in levels}
    try:
        bench(server.base_url, server.api_key, server.served_model_name, levels=(1,), max_tokens=8)  # warm-up
        for repeat in range(args.repeats):
            order = levels if repeat % 2 == 0 else levels[::-1]
            sweep = bench(server.base_url, server.api_key, server.served_model_name, levels=order,
                          max_tokens=args.max_tokens, progress=lambda line: print(line, flush=True))
            for level in sweep.levels:
                for metric in METRICS:
                    samples[f"{level.concurrency} stream(s)"][metric].append(getattr(level, metric))
    finally:
        if result.outcome == "Launched":  # never stop a server someone else started
            server.stop()
    median = {level: {m: statistics.median(samples[f"{level} stream(s)"][m]) for m in METRICS} for level in levels}
    low, high = levels[0], levels[-1]
    gain = median[high]["output_tokens_per_s"] / median[low]["output_tokens_per_s"]
    itl = median[high]["itl_median_ms"] / median[low]["itl_median_ms"]
    for level in levels:
        m = median[level]
        print(f"{level:3} stream(s): {m['output_tokens_per_s']:6.1f} tokens/s, TTFT {m['ttft_median_ms']:6.0f} ms, "
              f"ITL {m['itl_median_ms']:5.0f} ms")
    print(f"{high} streams: {gain:.1f}x the tokens/s of {low}, each stream's ITL {itl:.1f}x")
    path = save(
        "serving",
        title="`serving.py` (`%vllm_bench`)",
        what=f"concurrency sweep {'/'.join(map(str, levels))} on the {server.engine_label} server, {args.max_tokens}-"
             f"token answers, median of {args.repeats} sweeps (order alternating)",
        result=f"{low} stream {median[low]['output_tokens_per_s']:.1f} tok/s, {high} streams "
               f"{median[high]['output_tokens_per_s']:.1f} tok/s ({gain:.1f}x), ITL {itl:.1f}x",
        samples=samples, parameters=vars(args), extra={"gain": gain, "itl_ratio": itl},
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
