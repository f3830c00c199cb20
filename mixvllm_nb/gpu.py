"""Which accelerators this machine has: name, total and free memory per GPU, or none."""

from __future__ import annotations

import glob
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from functools import lru_cache


@dataclass(frozen=True)
class GPUInfo:
    """One GPU as the driver reports it (memory in bytes)."""

    index: int
    name: str
    total_memory: int
    free_memory: int | None = None
    utilization: int | None = None  # percent of time a kernel ran lately (nvidia-smi only)

    def to_dict(self) -> dict:
        """Return the info as JSON-ready data."""
        return asdict(self)


def _device_nodes_present() -> bool:
    # Without a driver's device nodes no library can see a GPU: skip importing torch (seconds).
    return bool(glob.glob("/dev/nvidia[0-9]*") or glob.glob("/dev/kfd") or glob.glob("/dev/dxg"))


def _from_torch() -> list[GPUInfo] | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        try:
            free, _total = torch.cuda.mem_get_info(index)
        except RuntimeError:
            free = None
        gpus.append(GPUInfo(index, props.name, int(props.total_memory), free))
    return gpus


def _from_nvidia_smi() -> list[GPUInfo] | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=index,name,memory.total,memory.free,utilization.gpu",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = []
    mib = 1024 * 1024
    for line in out.strip().splitlines():
        index, rest = line.split(",", 1)
        name, total, free, busy = (part.strip() for part in rest.rsplit(",", 3))  # a name may hold commas
        try:
            gpus.append(GPUInfo(int(index), name, int(float(total) * mib), _number(free, mib), _number(busy, 1)))
        except ValueError:  # no usable memory figure for this GPU: leave it out rather than fail
            continue
    return gpus


def _number(text: str, unit: int) -> int | None:
    """Return ``text`` times ``unit``; None for nvidia-smi's "[N/A]" (some GPUs report no such figure)."""
    try:
        return int(float(text) * unit)
    except ValueError:
        return None


def detect_gpus(*, refresh: bool = False) -> list[GPUInfo]:
    """Return the GPUs: from nvidia-smi, else torch.cuda when importable, else an empty list.

    nvidia-smi comes first: torch creates a CUDA context in this process (on an H100 a kernel then
    holds 518 MiB that the model server cannot use, benchmarks/gpu_detection.py) and takes seconds
    to import. Without a GPU driver's device nodes nothing is asked: a CPU machine answers at once.
    """
    if refresh:
        _detect_cached.cache_clear()
    return list(_detect_cached())


@lru_cache(maxsize=1)
def _detect_cached() -> tuple[GPUInfo, ...]:
    if "torch" not in sys.modules and not _device_nodes_present():
        return ()
    return tuple(_from_nvidia_smi() or _from_torch() or [])


def has_gpu() -> bool:
    """Return True when at least one GPU is visible."""
    return bool(detect_gpus())
