"""Common GPUs and their memory, so a plan can say "H100" instead of a number."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigError

_MIB = 1024 * 1024
_GIB = 1024**3


@dataclass(frozen=True)
class GPUSpec:
    """One GPU model: the memory its driver reports, and the size on the box."""

    name: str
    memory_bytes: int
    nominal_gb: int
    aliases: tuple[str, ...] = ()
    cc: float | None = None  # CUDA compute capability; None for AMD
    geforce: bool = False  # a consumer card: no NVSwitch, PCIe peer-to-peer off in the driver

    @property
    def supports_bf16_fp8(self) -> bool:
        """Return whether vLLM can use bfloat16 and fp8 here (CUDA needs Ampere, cc >= 8.0)."""
        return self.cc is None or self.cc >= 8.0

    @property
    def memory_gib(self) -> float:
        """Return the driver-reported total memory in GiB."""
        return self.memory_bytes / _GIB


# memory_bytes is what nvidia-smi / torch.cuda report as total memory (vLLM multiplies *that* by
# gpu_memory_utilization), which is below the marketed size: a "16 GB" T4 shows 15360 MiB.
GPUS: tuple[GPUSpec, ...] = (
    GPUSpec("T4", 15360 * _MIB, 16, ("Tesla T4",), cc=7.5),
    GPUSpec("L4", 23034 * _MIB, 24, cc=8.9),
    GPUSpec("A10G", 23028 * _MIB, 24, cc=8.6),
    GPUSpec("A10", 23028 * _MIB, 24, cc=8.6),
    GPUSpec("V100-16GB", 16160 * _MIB, 16, ("V100",), cc=7.0),
    GPUSpec("V100-32GB", 32510 * _MIB, 32, cc=7.0),
    GPUSpec("RTX 3090", 24576 * _MIB, 24, ("3090",), cc=8.6, geforce=True),
    GPUSpec("RTX 4090", 24564 * _MIB, 24, ("4090",), cc=8.9, geforce=True),
    GPUSpec("RTX A6000", 49140 * _MIB, 48, ("A6000",), cc=8.6),
    GPUSpec("L40", 46068 * _MIB, 48, cc=8.9),
    GPUSpec("L40S", 46068 * _MIB, 48, cc=8.9),
    GPUSpec("A100-40GB", 40960 * _MIB, 40, cc=8.0),
    GPUSpec("A100-80GB", 81920 * _MIB, 80, cc=8.0),
    GPUSpec("H100-80GB", 81559 * _MIB, 80, ("H100", "H100 SXM", "H100 PCIe", "H100 HBM3"), cc=9.0),
    GPUSpec("H100-NVL", 95830 * _MIB, 94, ("H100 NVL",), cc=9.0),
    GPUSpec("H200", 143771 * _MIB, 141, cc=9.0),
    GPUSpec("MI300X", 205822885888, 192),
)

# Words that name a vendor or a form factor, not the model: "NVIDIA A100-SXM4-80GB" -> A100-80GB.
_NOISE = {"nvidia", "geforce", "tesla", "amd", "instinct", "radeon", "sxm", "sxm4", "sxm5", "pcie",
          "hbm3", "hbm3e", "oam", "nvl"}


def _tokens(name: str) -> frozenset[str]:
    text = re.sub(r"(\d+)\s*gb\b", r"\1gb", name.lower())
    return frozenset(t for t in re.split(r"[^a-z0-9]+", text) if t)


def _keys(spec: GPUSpec) -> list[frozenset[str]]:
    return [_tokens(n) for n in (spec.name, *spec.aliases)]


def find_gpu(name: str) -> GPUSpec:
    """Return the GPU spec for a name such as "h100", "RTX 4090" or "NVIDIA A100-SXM4-80GB".

    Matching ignores case, punctuation and vendor words; a name that fits several GPUs (e.g.
    "A100", which comes with 40 or 80 GB) raises ``ConfigError`` listing them.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"gpu={name!r} is not a GPU name; known GPUs: {known_gpu_names()}")
    wanted = _tokens(name)
    for spec in GPUS:
        if wanted in _keys(spec):
            return spec
    # A driver's long name: every token of a table entry appears in it (the longest entry wins).
    significant = wanted - _NOISE
    candidates = [
        (len(key), spec)
        for spec in GPUS
        for key in _keys(spec)
        if key <= wanted and key & significant
    ]
    if candidates:
        best = max(size for size, _ in candidates)
        winners = {spec.name: spec for size, spec in candidates if size == best}
        if len(winners) == 1:
            return next(iter(winners.values()))
    # A short name that is part of several entries ("A100"): ambiguous, say which.
    partial = sorted({spec.name for spec in GPUS for key in _keys(spec)
                      if significant and significant <= key})
    if len(partial) > 1:
        raise ConfigError(f"gpu={name!r} is ambiguous: say one of {', '.join(partial)}")
    if len(partial) == 1:
        return next(spec for spec in GPUS if spec.name == partial[0])
    raise ConfigError(
        f"gpu={name!r} is not a known GPU; use one of {known_gpu_names()} or give its memory in GiB"
    )


def is_geforce(label: str) -> bool:
    """Return whether ``label`` (a name from :data:`GPUS`) is a GeForce card."""
    return any(spec.geforce and spec.name == label for spec in GPUS)


def known_gpu_names() -> str:
    """Return the table's GPU names, comma-separated, for messages."""
    return ", ".join(spec.name for spec in GPUS)


def resolve_gpu(gpu: str | float | int) -> tuple[str, int, bool]:
    """Return (label, total memory in bytes, bf16/fp8 support) for a name or a size in GiB."""
    if isinstance(gpu, bool):
        raise ConfigError(f"gpu={gpu!r} is not allowed: give a GPU name or its memory in GiB")
    if isinstance(gpu, int | float):
        if not 0 < gpu < float("inf"):
            raise ConfigError(f"gpu={gpu!r} GiB is not allowed: memory must be a positive number")
        return f"{gpu:.4g} GiB GPU", int(gpu * _GIB), True
    spec = find_gpu(gpu)
    return spec.name, spec.memory_bytes, spec.supports_bf16_fp8
