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
    for line in out.strip().splitlines():
        index, name, total, free, busy = (part.strip() for part in line.split(","))
        mib = 1024 * 1024
        utilization = int(float(busy)) if busy.replace(".", "", 1).isdigit() else None  # "[N/A]" on some GPUs
        gpus.append(GPUInfo(int(index), name, int(float(total) * mib), int(float(free) * mib), utilization))
    return gpus


def detect_gpus(*, refresh: bool = False) -> list[GPUInfo]:
    """Return the GPUs: from torch.cuda when torch is already imported, else nvidia-smi, else
    torch.cuda when importable, else an empty list.

    nvidia-smi comes before importing torch: torch would create a CUDA context in this process (a
    kernel would then hold GPU memory that the model server cannot use) and take seconds to
    import. Without a GPU driver's device nodes nothing is asked: a CPU machine answers at once.
    """
    if refresh:
        _detect_cached.cache_clear()
    return list(_detect_cached())


@lru_cache(maxsize=1)
def _detect_cached() -> tuple[GPUInfo, ...]:
    if "torch" in sys.modules:
        return tuple(_from_torch() or _from_nvidia_smi() or [])
    if not _device_nodes_present():
        return ()
    return tuple(_from_nvidia_smi() or _from_torch() or [])


def has_gpu() -> bool:
    """Return True when at least one GPU is visible."""
    return bool(detect_gpus())
