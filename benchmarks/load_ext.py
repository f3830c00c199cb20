"""Time of ``%load_ext mixvllm_nb`` in a fresh IPython process, and the heavy modules it imports.

Compares with ``%load_ext jupyter_ai_magics`` when that package is installed (the baseline the
issue names; about 0.72 s measured elsewhere). Target: ours under 0.15 s, no heavy module.

    .venv/bin/python benchmarks/load_ext.py [--runs 7]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys

HEAVY = ("torch", "vllm", "transformers", "openai", "numpy", "pandas", "matplotlib")
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


def measure(extension: str, runs: int) -> tuple[float, list[str]]:
    """Return the median load time over ``runs`` fresh processes and the heavy modules seen."""
    times, heavy = [], set()
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", PROBE.format(ext=extension, heavy=HEAVY)],
                             capture_output=True, text=True, check=True).stdout
        info = json.loads(out.strip().splitlines()[-1])
        times.append(info["seconds"])
        heavy.update(info["heavy"])
    return statistics.median(times), sorted(heavy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    ours, heavy = measure("mixvllm_nb", args.runs)
    print(f"%load_ext mixvllm_nb: median {ours * 1000:.1f} ms over {args.runs} runs; heavy modules: {heavy or 'none'}")
    if importlib.util.find_spec("jupyter_ai_magics"):
        theirs, their_heavy = measure("jupyter_ai_magics", args.runs)
        print(f"%load_ext jupyter_ai_magics: median {theirs * 1000:.1f} ms; heavy: {their_heavy or 'none'}")
        print(f"ratio: {ours / theirs:.3f}x")
    else:
        print("%load_ext jupyter_ai_magics: not installed here (baseline not measured in this run)")
    print(f"target: < 150 ms and no heavy module -> {'met' if ours < 0.15 and not heavy else 'NOT met'}")


if __name__ == "__main__":
    main()
