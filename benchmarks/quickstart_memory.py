"""Peak memory of the quickstart notebook, run top to bottom, on the light engine vs vLLM.

Binder gives 1-2 GB; target: the quickstart on llama.cpp under 1.5 GB, everything counted: the
kernel, the model server and its children, the watchdog, and the Jupyter server (the proxy cell
needs one, as on Binder). The baseline is the same notebook on vLLM's CPU server, in the same run.

Memory is sampled every 0.2 s as the sum over those processes of the resident set (RSS, an upper
bound: shared pages count once per process) and of the proportional set (PSS, shared pages split
between their users: what a container's limit sees, give or take the page cache).

    .venv/bin/python benchmarks/quickstart_memory.py [--engines llamacpp,vllm]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat
import psutil
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
    args = parser.parse_args()
    results = {}
    for engine in args.engines.split(","):
        sampler, seconds = run_quickstart(engine)
        results[engine] = sampler
        print(f"{engine:>9}: peak RSS {sampler.peak_rss / 1e9:.2f} GB, peak PSS {sampler.peak_pss / 1e9:.2f} GB "
              f"over {sampler.peak_processes} processes; notebook ran in {seconds:.0f} s")
    first, *others = list(results)
    verdict = "under" if results[first].peak_pss < TARGET_BYTES else "OVER"
    print(f"{first}: {verdict} the {TARGET_BYTES / 1e9:.1f} GB target (PSS)")
    for other in others:
        print(f"{first} / {other}: {results[first].peak_pss / results[other].peak_pss:.2f}x the memory (PSS)")


if __name__ == "__main__":
    main()
