"""Time to ready: ``VLLMServer.start()`` against the bare vLLM command with the same flags.

Runs interleaved, in pairs whose order alternates (bare then ours, ours then bare, ...) so that machine
noise and a warming page cache hit both alike; at least 7 pairs. Prints the median and spread (min-max)
of each, and our overhead as the median of the pairs' differences. Target: at most 1 s over the bare
command. Result: results/startup.json.

    .venv/bin/python benchmarks/startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import tempfile
import time

os.environ.setdefault("MIXVLLM_STATE_DIR", tempfile.mkdtemp(prefix="mixvllm-bench-"))

from _results import save  # noqa: E402

from mixvllm_nb import VLLMServer  # noqa: E402
from mixvllm_nb.process.http import http_get  # noqa: E402
from mixvllm_nb.process.tree import MARKER_ENV, stop_processes  # noqa: E402


def time_bare(template: VLLMServer) -> float:
    """Start the bare command (same flags, same env), wait for /v1/models, stop it."""
    server = VLLMServer(config=template.config.model_copy(deep=True))
    server.config.server.port = None
    server.config.server.name = None
    server.prepare()
    # The marker lets stop_processes find the tree (it signals only marked processes); vLLM ignores it.
    marker = secrets.token_hex(16)
    command = server.get_launch_command()
    env = {**os.environ, **server.get_launch_env(), MARKER_ENV: marker}
    # Its output goes to a file, as ours does: the same work on both sides.
    log = tempfile.NamedTemporaryFile(prefix="mixvllm-bench-bare-", suffix=".log", delete=False)
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
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

        report = stop_processes(psutil.Process(proc.pid), marker)
        proc.wait(timeout=30)
        log.close()
        os.unlink(log.name)
        if not report.clean:
            raise RuntimeError(f"the bare vLLM did not stop cleanly: {report.summary()}")


def time_ours(template: VLLMServer) -> float:
    """Construct, start (ready = /health and /v1/models), stop."""
    started = time.perf_counter()
    server = VLLMServer(config=template.config.model_copy(deep=True)).start()
    elapsed = time.perf_counter() - started
    server.stop()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="interleaved pairs (at least 7)")
    args = parser.parse_args()
    if args.runs < 7:
        parser.error("--runs: at least 7 pairs, for a median with its spread")
    template = VLLMServer()
    template.prepare()  # convert the default model once, outside the timings
    template.config.server.port = None
    template.config.server.api_key = None
    bare: list[float] = []
    ours: list[float] = []
    for run in range(args.runs):
        order = [("bare", time_bare), ("ours", time_ours)]
        for label, timed in order if run % 2 == 0 else order[::-1]:
            (bare if label == "bare" else ours).append(timed(template))
        print(f"run {run + 1}: bare {bare[-1]:.2f} s, mixvllm_nb {ours[-1]:.2f} s", flush=True)
    differences = [o - b for b, o in zip(bare, ours, strict=True)]
    b, o, d = statistics.median(bare), statistics.median(ours), statistics.median(differences)
    print(f"time to ready, median (min-max) of {args.runs}: bare vLLM {b:.2f} s ({min(bare):.2f}-{max(bare):.2f}), "
          f"VLLMServer.start() {o:.2f} s ({min(ours):.2f}-{max(ours):.2f})")
    print(f"overhead, median of the pairs: {d:+.2f} s ({min(differences):+.2f} to {max(differences):+.2f}); "
          "target <= +1.00 s")
    path = save(
        "startup",
        what=f"time to ready, `VLLMServer.start()` vs the bare vLLM command with the same flags, {args.runs} "
             "interleaved pairs (order alternating)",
        result=f"{o:.2f} s ({min(ours):.2f}-{max(ours):.2f}) vs {b:.2f} s ({min(bare):.2f}-{max(bare):.2f}): "
               f"{d:+.2f} s per pair (median; {min(differences):+.2f} to {max(differences):+.2f}), target <= +1 s",
        samples={"bare vLLM": {"time_to_ready_s": bare}, "VLLMServer.start()": {"time_to_ready_s": ours},
                 "overhead per pair": {"seconds": differences}},
        parameters=vars(args),
        extra={"target_met": d <= 1.0},
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
