"""What serving on a Ray cluster costs: time to the first answer and memory, a Ray job vs a local server.

    .venv/bin/python benchmarks/cluster.py [--pairs 2]

A local Ray cluster (``start_local_cluster``: head on loopback, token authentication on) is started once and
timed. Then, in interleaved pairs (order alternating), the embedded model is served with the same config on
this machine (``api.serve``) and as a Ray job on the cluster (``--cluster``); each is timed from the call to
its first answer, and its memory (resident, all its processes) is read while it serves. The cluster's own
processes (Ray's head) are measured apart: what a cluster adds to a machine besides the engine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import psutil
from _results import save

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixvllm_nb import api  # noqa: E402
from mixvllm_nb.config import ServeConfig  # noqa: E402
from mixvllm_nb.process.tree import MARKER_ENV  # noqa: E402
from mixvllm_nb.ray_cluster import start_local_cluster  # noqa: E402

GIB = 2**30


def marked_rss(marker: str) -> int:
    """Return the resident memory of every process carrying ``marker`` (a server's, or the cluster's)."""
    total = 0
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARKER_ENV) == marker:
                total += process.memory_info().rss
        except psutil.Error:
            continue
    return total


def serve_and_answer(address: str | None) -> tuple[float, int]:
    """Serve the embedded model (here, or as a Ray job), ask once; return (seconds to the answer, RSS bytes)."""
    data = {"generation_defaults": {"temperature": 0, "max_tokens": 8}, "backend": "vllm"}
    if address:
        data["cluster"] = {"address": address}
    start = time.perf_counter()
    server = api.serve(ServeConfig.model_validate(data), reuse=False).server
    try:
        answer = server.chat("What is the capital of France?").text
        seconds = time.perf_counter() - start
        assert "Paris" in answer, answer
        return seconds, marked_rss(server.record.marker or "")
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2, help="interleaved local / Ray job starts")
    args = parser.parse_args()

    start = time.perf_counter()
    cluster = start_local_cluster(num_cpus=2)
    head_s = time.perf_counter() - start
    samples: dict[str, dict[str, list[float]]] = {
        "local server": {"first_answer_s": [], "rss_gib": []},
        "Ray job": {"first_answer_s": [], "rss_gib": []},
        "Ray head": {"start_s": [head_s], "rss_gib": [marked_rss(cluster.marker) / GIB]},
    }
    print(f"Ray head up in {head_s:.1f} s, {samples['Ray head']['rss_gib'][0]:.2f} GiB", flush=True)
    try:
        for i in range(args.pairs):
            order = [None, cluster.address] if i % 2 == 0 else [cluster.address, None]
            for address in order:
                seconds, rss = serve_and_answer(address)
                path = "Ray job" if address else "local server"
                samples[path]["first_answer_s"].append(seconds)
                samples[path]["rss_gib"].append(rss / GIB)
                print(f"{path}: first answer after {seconds:.1f} s, {rss / GIB:.2f} GiB", flush=True)
    finally:
        cluster.stop()

    def median(path: str, metric: str) -> float:
        return statistics.median(samples[path][metric])

    local_s, job_s = median("local server", "first_answer_s"), median("Ray job", "first_answer_s")
    local_gib, job_gib = median("local server", "rss_gib"), median("Ray job", "rss_gib")
    head_gib = samples["Ray head"]["rss_gib"][0]
    path = save(
        "cluster",
        what=f"the embedded model served as a Ray job on a local Ray cluster vs on this machine: time from the call to "
             f"the first answer and resident memory, {args.pairs} interleaved pairs; the Ray head's start and memory",
        result=f"Ray job {job_s:.1f} s vs local {local_s:.1f} s to the first answer (+{job_s - local_s:.1f} s); "
               f"engine {job_gib:.2f} vs {local_gib:.2f} GiB RSS; Ray head up in {head_s:.1f} s, {head_gib:.2f} GiB "
               f"(head + job {head_gib + job_gib:.1f} GiB, within the 24 GiB CI machine)",
        samples=samples, parameters=vars(args),
        extra={"job_minus_local_s": round(job_s - local_s, 2), "head_plus_job_gib": round(head_gib + job_gib, 2)},
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
