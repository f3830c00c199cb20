"""Time of ``%load_ext mixvllm_nb`` in a fresh IPython process, and the heavy modules it imports.

Compares with ``%load_ext jupyter_ai_magics`` (installed by the ``bench`` extra: ``make bench``), in
the same run and interleaved (ours, theirs, ours, ...), each in a fresh process. Target: ours under
0.15 s, no heavy module. Result: results/load_ext.json.

    .venv/bin/python benchmarks/load_ext.py [--runs 7]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys

from _results import save

HEAVY = ("torch", "vllm", "transformers", "openai", "numpy", "pandas", "matplotlib", "langchain")
PROBE = """
import json, sys, time
from IPython.testing.globalipapp import start_ipython
ip = start_ipython()
before = set(sys.modules)
t = time.perf_counter()
ip.run_line_magic("load_ext", {ext!r})
elapsed = time.perf_counter() - t
print(json.dumps({{"seconds": elapsed, "heavy": [m for m in {heavy!r} if m in set(sys.modules) - before]}}))
"""


def measure_once(extension: str) -> tuple[float, list[str]]:
    """Return the load time in one fresh process and the heavy modules it imported."""
    out = subprocess.run([sys.executable, "-c", PROBE.format(ext=extension, heavy=HEAVY)],
                         capture_output=True, text=True, check=True).stdout
    info = json.loads(out.strip().splitlines()[-1])
    return info["seconds"], info["heavy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    extensions = ["mixvllm_nb"]
    if importlib.util.find_spec("jupyter_ai_magics"):
        extensions.append("jupyter_ai_magics")
    else:
        print("%load_ext jupyter_ai_magics: not installed (pip install -e '.[bench]'); baseline not measured")
    times: dict[str, list[float]] = {ext: [] for ext in extensions}
    heavy: dict[str, set[str]] = {ext: set() for ext in extensions}
    for ext in extensions:
        measure_once(ext)  # warm-up: bytecode compiled, files in the page cache, for both alike
    for _ in range(args.runs):
        for ext in extensions:
            seconds, modules = measure_once(ext)
            times[ext].append(seconds * 1000)
            heavy[ext].update(modules)
    for ext in extensions:
        ms = times[ext]
        print(f"%load_ext {ext}: median {statistics.median(ms):.1f} ms ({min(ms):.1f}-{max(ms):.1f}) over "
              f"{args.runs} runs; heavy modules: {sorted(heavy[ext]) or 'none'}")
    ours = statistics.median(times["mixvllm_nb"])
    met = ours < 150 and not heavy["mixvllm_nb"]
    print(f"target: < 150 ms and no heavy module -> {'met' if met else 'NOT met'}")
    result = (f"{ours:.1f} ms ({min(times['mixvllm_nb']):.1f}-{max(times['mixvllm_nb']):.1f}), "
              f"heavy modules: {', '.join(sorted(heavy['mixvllm_nb'])) or 'none'}")
    extra: dict = {"target_met": met, "heavy_modules": {ext: sorted(found) for ext, found in heavy.items()}}
    if "jupyter_ai_magics" in times:
        theirs = statistics.median(times["jupyter_ai_magics"])
        result += (f"; `jupyter_ai_magics` {theirs:.0f} ms ({min(times['jupyter_ai_magics']):.0f}-"
                   f"{max(times['jupyter_ai_magics']):.0f}), {theirs / ours:.0f}x ours")
        extra["ratio_to_jupyter_ai_magics"] = ours / theirs
    result += " (target < 150 ms, no heavy module)"
    path = save("load_ext", what=f"`%load_ext` in a fresh IPython process, median of {args.runs} interleaved runs "
                "(after one warm-up each), vs jupyter-ai-magics", result=result,
                samples={ext: {"load_ms": ms} for ext, ms in times.items()}, parameters=vars(args), extra=extra)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
