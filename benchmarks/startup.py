"""Time to ready: ``VLLMServer.start()`` against the bare vLLM command with the same flags.

Runs interleaved (bare, ours, bare, ours, ...) so that machine noise hits both alike, and prints
the median of each and our overhead. Target: at most 1 s over the bare command.

    .venv/bin/python benchmarks/startup.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time

os.environ.setdefault("MIXVLLM_STATE_DIR", tempfile.mkdtemp(prefix="mixvllm-bench-"))

from mixvllm_nb import VLLMServer  # noqa: E402
from mixvllm_nb.process.http import http_get  # noqa: E402
from mixvllm_nb.process.tree import stop_processes  # noqa: E402


def time_bare(template: VLLMServer) -> float:
    """Start the bare command (same flags, same env), wait for /v1/models, stop it."""
    server = VLLMServer(config=template.config.model_copy(deep=True))
    server.config.server.port = None
    server.config.server.name = None
    server.prepare()
    command, env = server.get_launch_command(), {**os.environ, **server.get_launch_env()}
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while True:
            status, _ = http_get(f"{server.base_url}/v1/models", api_key=server.api_key, timeout=2)
            if status == 200:
                return time.perf_counter() - started
            if proc.poll() is not None:
                raise RuntimeError("bare vLLM exited while starting")
            time.sleep(0.25)
    finally:
        import psutil

        stop_processes(psutil.Process(proc.pid), None)
        proc.wait()


def time_ours(template: VLLMServer) -> float:
    """Construct, start (ready = /health and /v1/models), stop."""
    started = time.perf_counter()
    server = VLLMServer(config=template.config.model_copy(deep=True)).start()
    elapsed = time.perf_counter() - started
    server.stop()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    template = VLLMServer()
    template.prepare()  # convert the default model once, outside the timings
    template.config.server.port = None
    template.config.server.api_key = None
    bare, ours = [], []
    for run in range(args.runs):
        bare.append(time_bare(template))
        ours.append(time_ours(template))
        print(f"run {run + 1}: bare {bare[-1]:.2f} s, mixvllm_nb {ours[-1]:.2f} s", flush=True)
    b, o = statistics.median(bare), statistics.median(ours)
    print(f"median time to ready: bare vLLM {b:.2f} s, VLLMServer.start() {o:.2f} s")
    print(f"overhead: {o - b:+.2f} s ({o / b:.3f}x); target <= +1.00 s")


if __name__ == "__main__":
    main()
