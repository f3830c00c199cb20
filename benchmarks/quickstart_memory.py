"""Peak memory of the quickstart notebook, run top to bottom, on the light engine vs vLLM.

Binder gives 1-2 GB; target: the quickstart on llama.cpp under 1.5 GB, everything counted: the
kernel, the model server and its children, the watchdog, and the Jupyter server (the proxy cell
needs one, as on Binder). The baseline is the same notebook on vLLM's CPU server, in the same run.

Memory is sampled every 0.2 s as the sum over those processes of the resident set (RSS, an upper
bound: shared pages count once per process) and of the proportional set (PSS, shared pages split
between their users: what a container's limit sees, give or take the page cache).

Each run measures every engine once, in turn (``--runs`` such rounds). Result: results/quickstart_memory.json.

    .venv/bin/python benchmarks/quickstart_memory.py [--engines llamacpp,vllm] [--runs 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat
import psutil
from _results import save
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "01_quickstart.ipynb"
TARGET_BYTES = 1.5e9
sys.path.insert(0, str(ROOT / "tests"))


class PeakSampler:
    """Sample the memory of some process trees in a thread; keep the peaks."""

    def __init__(self, roots: list[psutil.Process], exclude: int, interval: float = 0.2) -> None:
        self.roots, self.exclude, self.interval = roots, exclude, interval
        self.peak_rss = self.peak_pss = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _processes(self) -> list[psutil.Process]:
        found: dict[int, psutil.Process] = {}
        for root in self.roots:
            try:
                for proc in [root, *root.children(recursive=True)]:
                    found[proc.pid] = proc
            except psutil.Error:
                continue
        found.pop(self.exclude, None)
        return list(found.values())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rss = pss = 0
            procs = self._processes()
            for proc in procs:
                try:
                    info = proc.memory_full_info()
                except psutil.Error:
                    continue
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.peak_processes = max(self.peak_processes, len(procs))

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_quickstart(engine: str) -> tuple[PeakSampler, float]:
    """Execute the quickstart with ``$MIXVLLM_BACKEND=engine``; return its memory peaks and seconds."""
    from test_server_support import JupyterProcess

    home = Path(tempfile.mkdtemp(prefix=f"mixvllm-bench-{engine}-"))
    saved = dict(os.environ)
    # A registry of its own: the notebook must launch its server, not reuse one running elsewhere.
    os.environ.update({"MIXVLLM_BACKEND": engine, "MIXVLLM_STATE_DIR": str(home / "state")})
    jupyter = JupyterProcess(NOTEBOOK.parent, home).start()  # its proxy reads the same registry
    os.environ.update({"JUPYTER_SERVER_URL": jupyter.url, "JUPYTER_TOKEN": jupyter.token})
    me = psutil.Process()
    try:
        notebook = nbformat.read(NOTEBOOK, as_version=4)
        client = NotebookClient(notebook, kernel_name="python3", timeout=900,
                                resources={"metadata": {"path": str(NOTEBOOK.parent)}})
        started = time.perf_counter()
        with PeakSampler([me, psutil.Process(jupyter.process.pid)], exclude=me.pid) as sampler:
            client.execute()
        return sampler, time.perf_counter() - started
    finally:
        os.environ.clear()
        os.environ.update(saved)
        jupyter.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="llamacpp,vllm", help="comma-separated; the first is measured "
                        "against the others")
    parser.add_argument("--runs", type=int, default=1, help="rounds (each runs the notebook once per engine)")
    args = parser.parse_args()
    engines = args.engines.split(",")
    samples: dict[str, dict[str, list[float]]] = {
        engine: {"peak_pss_gb": [], "peak_rss_gb": [], "processes": [], "notebook_s": []} for engine in engines}
    for _ in range(args.runs):
        for engine in engines:
            sampler, seconds = run_quickstart(engine)
            for key, value in (("peak_pss_gb", sampler.peak_pss / 1e9), ("peak_rss_gb", sampler.peak_rss / 1e9),
                               ("processes", sampler.peak_processes), ("notebook_s", seconds)):
                samples[engine][key].append(value)
            print(f"{engine:>9}: peak RSS {sampler.peak_rss / 1e9:.2f} GB, peak PSS {sampler.peak_pss / 1e9:.2f} GB "
                  f"over {sampler.peak_processes} processes; notebook ran in {seconds:.0f} s")
    pss = {engine: statistics.median(samples[engine]["peak_pss_gb"]) for engine in engines}
    rss = {engine: statistics.median(samples[engine]["peak_rss_gb"]) for engine in engines}
    first, *others = engines
    met = pss[first] * 1e9 < TARGET_BYTES
    print(f"{first}: {'under' if met else 'OVER'} the {TARGET_BYTES / 1e9:.1f} GB target (PSS)")
    result = f"{first} {pss[first]:.2f} GB PSS ({rss[first]:.2f} GB RSS)"
    for other in others:
        print(f"{first} / {other}: {pss[first] / pss[other]:.2f}x the memory (PSS)")
        result += f", {other} {pss[other]:.2f} GB PSS: {pss[first] / pss[other]:.2f}x"
    result += f" (target < {TARGET_BYTES / 1e9:.1f} GB for Binder)"
    runs = f", median of {args.runs} runs" if args.runs > 1 else ", one run"
    path = save("quickstart_memory",
                what="peak memory of the quickstart notebook run top to bottom (kernel, model server, watchdog, "
                     f"Jupyter server), {' vs '.join(engines)}{runs}",
                result=result, samples=samples, parameters=vars(args), extra={"target_met": met})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
