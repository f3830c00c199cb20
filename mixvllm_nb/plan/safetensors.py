"""Exact weight sizes from safetensors headers, without torch and without reading the tensors."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

# A header is a few hundred KiB even for 100B-parameter shards; refuse absurd lengths, which
# mean the file is not safetensors (or is a git-lfs pointer), before allocating them.
_MAX_HEADER = 256 * 1024 * 1024

# Floating dtypes vLLM casts to the serving dtype when it loads an unquantized checkpoint.
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a checkpoint: its name, dtype, shape and size on disk."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int

    @property
    def numel(self) -> int:
        """Return the number of elements."""
        return math.prod(self.shape)


def read_safetensors_header(path: str | Path) -> list[TensorInfo]:
    """Return the tensors listed in one .safetensors file's header (8-byte length + JSON)."""
    path = Path(path)
    with path.open("rb") as f:
        raw_len = f.read(8)
        if len(raw_len) != 8:
            raise ConfigError(f"{path} is not a safetensors file: shorter than its 8-byte header")
        (length,) = struct.unpack("<Q", raw_len)
        if length > _MAX_HEADER:
            raise ConfigError(f"{path} is not a safetensors file: header length {length} is absurd")
        blob = f.read(length)
    if len(blob) != length:
        raise ConfigError(f"{path} is truncated: header says {length} bytes, file has {len(blob)}")
    try:
        header = json.loads(blob)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not a safetensors file: header is not JSON ({exc})") from None
    tensors = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = entry["data_offsets"]
            info = TensorInfo(name, str(entry["dtype"]), tuple(entry["shape"]), end - start)
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{path}: tensor {name!r} has no dtype/shape/data_offsets") from None
        tensors.append(info)
    return tensors


def read_checkpoint(folder: str | Path) -> list[TensorInfo]:
    """Return the tensors of every *.safetensors file in a folder (empty if there are none)."""
    tensors: list[TensorInfo] = []
    for path in sorted(Path(folder).glob("*.safetensors")):
        tensors.extend(read_safetensors_header(path))
    return tensors


def is_quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """Return True for a linear weight inside a decoder layer (what awq/gptq/fp8 compress).

    Embeddings, lm_head, norms, biases and MoE routers keep the model dtype, as vLLM does.
    """
    if len(shape) < 2 or not name.endswith("weight"):
        return False
    lowered = name.lower()
    if any(word in lowered for word in ("embed", "lm_head", "norm", "router", "visual", "vision")):
        return False
    # "mlp.gate.weight" (DeepSeek/Qwen-MoE) and "block_sparse_moe.gate.weight" (Mixtral) are the
    # routers; "mlp.gate_proj.weight" is an ordinary linear layer.
    return not lowered.endswith(".gate.weight")
