"""What finding the GPUs costs a kernel: nvidia-smi (what mixvllm_nb does) vs torch.cuda (the usual way).

Each way runs in a fresh Python process that then stays alive while nvidia-smi reports the GPU
memory that process holds: torch creates a CUDA context, which keeps hundreds of MiB of every GPU
it touched for the rest of a kernel's life, memory the model server then cannot use. Median of
``--runs`` fresh processes each, interleaved. Result: results/gpu_detection.json. On a machine without an
NVIDIA GPU it says so, writes nothing and exits 0 (``make bench`` runs everywhere).

    python benchmarks/gpu_detection.py [--runs 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _results import save

ROOT = Path(__file__).resolve().parents[1]
WAYS = {
    "mixvllm_nb.gpu.detect_gpus": "from mixvllm_nb.gpu import detect_gpus; gpus = detect_gpus()",
    "torch.cuda (import + mem_get_info)": "import torch; gpus = [torch.cuda.mem_get_info(i) "
                                          "for i in range(torch.cuda.device_count())]",
}
PROBE = """
import sys, time
sys.path.insert(0, {root!r})
start = time.perf_counter()
{code}
print(f"{{time.perf_counter() - start:.4f}} {{len(gpus)}}", flush=True)
sys.stdin.read()  # stay alive until the parent has read our GPU memory
"""


def held_mib(pid: int) -> int:
    """Return the GPU memory (MiB) nvidia-smi lists for process ``pid`` (0 when none)."""
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(used) for line in out.splitlines() if line.strip()
               for found, used in [line.split(",")] if int(found) == pid)


def measure(code: str) -> tuple[float, int, int]:
    """Return (seconds, GPUs found, GPU MiB held) for one fresh process."""
    proc = subprocess.Popen([sys.executable, "-c", PROBE.format(root=str(ROOT), code=code)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    seconds, found = proc.stdout.readline().split()
    time.sleep(0.5)  # let the driver's accounting catch up
    mib = held_mib(proc.pid)
    proc.communicate("")
    return float(seconds), int(found), mib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    if not shutil.which("nvidia-smi"):
        print("no nvidia-smi: no NVIDIA GPU here, nothing to measure")
        return
    samples: dict[str, dict[str, list[float]]] = {name: {"seconds": [], "gpus_found": [], "gpu_mib_held": []}
                                                   for name in WAYS}
    for _ in range(runs):
        for name, code in WAYS.items():
            for key, value in zip(("seconds", "gpus_found", "gpu_mib_held"), measure(code), strict=True):
                samples[name][key].append(value)
    medians = {}
    for name, found in samples.items():
        medians[name] = (statistics.median(found["seconds"]), max(found["gpus_found"]), max(found["gpu_mib_held"]))
        seconds, gpus, mib = medians[name]
        print(f"{name:36} {seconds * 1000:8.0f} ms  {gpus} GPU(s)  holds {mib} MiB of GPU memory afterwards")
    ours, torch_way = medians.values()
    print(f"ours / torch: {ours[0] / torch_way[0]:.2f}x the time, {ours[2]} MiB vs {torch_way[2]} MiB held")
    path = save("gpu_detection",
                what=f"finding the GPUs in a fresh process: ours (nvidia-smi) vs torch.cuda, median of {runs}",
                result=f"{ours[0] * 1000:.0f} ms and {ours[2]} MiB of GPU memory held, vs {torch_way[0] * 1000:.0f} ms "
                       f"and {torch_way[2]} MiB (a CUDA context)",
                samples=samples, parameters={"runs": runs})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
