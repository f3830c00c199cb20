"""Check and resolve the planner's arguments: dtypes, quantization, parallelism, the device."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .gpus import resolve_gpu
from .overhead import check_engine, v0_batched_tokens
from .params import get_int

GIB = 1024**3
# The CUDA runtime keeps part of the memory nvidia-smi lists; vLLM multiplies what remains:
# RTX 4090 24,564 MiB -> 23.55 GiB, RTX 3090 24,576 MiB -> 23.58, H100 81,559 MiB -> 79.22.
CUDA_RESERVED_BYTES = int(0.43 * GIB)

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_DTYPE_ALIASES = {"float": "float32", "fp32": "float32", "half": "float16", "fp16": "float16",
                  "bf16": "bfloat16"}
_KV_DTYPES = {"auto": None, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, **DTYPE_BYTES}

# Bytes per parameter of a compressed linear weight. 4-bit AWQ/GPTQ: half a byte, plus per group
# of 128 inputs an fp16 scale and a packed 4-bit zero point per output column (2.5 B / 128).
QUANT_BYTES = {
    "awq": 0.5 + 2.5 / 128,
    "gptq": 0.5 + 2.5 / 128,
    "squeezellm": 0.5,  # 4-bit indices; its 16-entry lookup table per row is ignored
    "fp8": 1.0,  # per-tensor scales are negligible
    "mxfp4": 0.5 + 1 / 32,  # gpt-oss experts: 4-bit values, one E8M0 scale byte per 32
    "bitsandbytes": 0.5 + 4 / 64,  # NF4 with one fp32 absmax per 64 values
}
USER_QUANTIZATIONS = ("awq", "gptq", "fp8", "squeezellm")
# quant_method in a checkpoint's config -> the method whose sizes apply.
_DECLARED = {"awq": "awq", "awq_marlin": "awq", "gptq": "gptq", "gptq_marlin": "gptq",
             "fp8": "fp8", "fbgemm_fp8": "fp8", "mxfp4": "mxfp4", "squeezellm": "squeezellm",
             "bitsandbytes": "bitsandbytes"}
ALLOWED_BLOCK_SIZES = (1, 8, 16, 32, 64, 128, 256)
GPU_BLOCK_SIZE = 16
CPU_BLOCK_SIZE = 128


@dataclass(frozen=True)
class Options:
    """The planner's arguments after checking, with "auto" resolved against the config."""

    dtype: str
    quantization: str | None
    declared_quantization: str | None
    kv_cache_dtype: str
    kv_bytes: float
    max_model_len: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    gpu_memory_utilization: float
    device: str  # "cpu", "gpu" or "none" (no budget given)
    device_label: str
    device_bytes: int | None  # per GPU, or the CPU KV cache space
    block_size: int
    max_num_batched_tokens: int
    max_num_seqs: int
    overhead_bytes: int | None  # user's override of the GPU overhead estimate
    modern_gpu: bool = True  # bfloat16 and fp8 available (False on T4/V100)
    enforce_eager: bool = False  # no CUDA graphs, so no graph memory
    engine: str = "v1"  # which vLLM generation's profiling to model (overhead.ENGINES)
    notes: tuple[str, ...] = ()

    @property
    def dtype_bytes(self) -> int:
        """Return the bytes of one weight in the serving dtype."""
        return DTYPE_BYTES[self.dtype]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r} is not allowed: it must be an integer >= 1")
    return value


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.lower() not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; use one of {', '.join(allowed)}")
    return value.lower()


def resolve_dtype(dtype: Any, config: Mapping[str, Any]) -> tuple[str, list[str]]:
    """Return the serving dtype vLLM would use, and notes on how "auto" was resolved."""
    allowed = ("auto", *DTYPE_BYTES, *_DTYPE_ALIASES)
    name = _choice("dtype", dtype, allowed)
    name = _DTYPE_ALIASES.get(name, name)
    if name != "auto":
        return name, []
    declared = config.get("torch_dtype") or config.get("dtype")
    if declared is None and isinstance(config.get("text_config"), Mapping):
        declared = config["text_config"].get("torch_dtype") or config["text_config"].get("dtype")
    declared = _DTYPE_ALIASES.get(str(declared).lower(), str(declared).lower())
    if declared == "float32":
        # vLLM's "auto" downcasts float32 checkpoints to the platform's preferred 16-bit type.
        return "bfloat16", ["dtype auto: the config says float32; vLLM serves it as bfloat16"]
    if declared in DTYPE_BYTES:
        return declared, []
    return "bfloat16", ["dtype auto: the config names no dtype; assumed bfloat16"]


def resolve_quantization(
    quantization: Any, config: Mapping[str, Any]
) -> tuple[str | None, str | None, list[str]]:
    """Return (method used for sizes, method the checkpoint declares, notes)."""
    notes: list[str] = []
    qconfig = config.get("quantization_config")
    declared_raw = ""
    if isinstance(qconfig, Mapping):
        declared_raw = str(qconfig.get("quant_method", "")).lower()
    declared = _DECLARED.get(declared_raw)
    if declared_raw and declared is None:
        notes.append(f"checkpoint quantization {declared_raw!r} is not modelled: sized as dtype")
    if quantization is None:
        return declared, declared, notes
    wanted = _choice("quantization", quantization, USER_QUANTIZATIONS)
    if declared and declared != wanted:
        notes.append(f"the checkpoint is already {declared}-quantized; vLLM would refuse "
                      f"quantization={wanted!r}")
    return wanted, declared, notes


def resolve_options(
    config: Mapping[str, Any],
    text_cfg: Mapping[str, Any],
    *,
    dtype: Any,
    quantization: Any,
    kv_cache_dtype: Any,
    max_model_len: Any,
    tensor_parallel_size: Any,
    pipeline_parallel_size: Any,
    gpu_memory_utilization: Any,
    gpu: Any,
    cpu_kv_cache_gib: Any,
    block_size: Any,
    max_num_batched_tokens: Any,
    max_num_seqs: Any,
    overhead_gib: Any,
    enforce_eager: Any = False,
    engine: Any = "v1",
) -> Options:
    """Return checked options; raise ConfigError naming the first bad argument."""
    engine_name = check_engine(engine).name
    dtype_name, notes = resolve_dtype(dtype, config)
    quant, declared, quant_notes = resolve_quantization(quantization, config)
    notes += quant_notes
    kv_name = _choice("kv_cache_dtype", kv_cache_dtype, tuple(_KV_DTYPES))
    kv_bytes = _KV_DTYPES[kv_name] or DTYPE_BYTES[dtype_name]
    tp = _positive_int("tensor_parallel_size", tensor_parallel_size)
    pp = _positive_int("pipeline_parallel_size", pipeline_parallel_size)
    check_parallelism(text_cfg, tp, pp)
    if block_size is None:
        # vLLM's CPU platform pages its KV cache in blocks of 128 tokens unless told otherwise
        # (platforms/cpu.py). Measured: SmolLM2 bfloat16 at 2 GiB logs 93,184 tokens (728 blocks
        # of 128), where blocks of 16 would give 93,200.
        block_size = CPU_BLOCK_SIZE if cpu_kv_cache_gib is not None else GPU_BLOCK_SIZE
    if isinstance(block_size, bool) or block_size not in ALLOWED_BLOCK_SIZES:
        raise ConfigError(f"block_size={block_size!r} is not allowed; use one of "
                          f"{', '.join(map(str, ALLOWED_BLOCK_SIZES))}")
    limit = text_cfg.get("max_position_embeddings")
    if max_model_len is None:
        if not limit:
            raise ConfigError("max_model_len=None is not allowed here: the config has no "
                              "max_position_embeddings, so give max_model_len")
        max_model_len = int(limit)
    max_model_len = _positive_int("max_model_len", max_model_len)
    if limit and max_model_len > limit:
        raise ConfigError(f"max_model_len={max_model_len} is not allowed: the model's "
                          f"max_position_embeddings is {limit}")
    if not _is_number(gpu_memory_utilization) or not 0 < gpu_memory_utilization <= 1:
        raise ConfigError(f"gpu_memory_utilization={gpu_memory_utilization!r} is not allowed: "
                          "it must be a number with 0 < x <= 1")
    if gpu is not None and cpu_kv_cache_gib is not None:
        raise ConfigError("gpu and cpu_kv_cache_gib were both given; give one (GPU or CPU plan)")
    world = tp * pp
    modern = True
    if cpu_kv_cache_gib is not None:
        if not _is_number(cpu_kv_cache_gib) or not 0 < cpu_kv_cache_gib < math.inf:
            raise ConfigError(f"cpu_kv_cache_gib={cpu_kv_cache_gib!r} is not allowed: it must be a "
                              "positive number of GiB (VLLM_CPU_KVCACHE_SPACE)")
        device, label, size = "cpu", "CPU", int(cpu_kv_cache_gib * GIB)
        default_tokens, default_seqs = 2048 * world, 128 * world  # vLLM's CPU server defaults
    elif gpu is not None:
        label, size, modern = resolve_gpu(gpu)
        device = "gpu"
        if not modern and dtype_name == "bfloat16":
            # vLLM refuses bfloat16 below compute capability 8.0 and "auto" falls back to float16.
            if str(dtype).lower() != "auto":
                raise ConfigError(f"dtype={dtype!r} is not allowed on {label}: it has no bfloat16; "
                                  "use float16 or float32")
            dtype_name = "float16"
            notes.append(f"{label} has no bfloat16: served as float16")
        if not modern and quant == "fp8":
            raise ConfigError(f"quantization='fp8' is not allowed on {label}: vLLM's fp8 needs "
                              "compute capability >= 8.0; use awq or gptq")
        default_tokens, default_seqs = _gpu_scheduler_defaults(label, size)
        if engine_name == "v0":
            default_tokens, default_seqs = v0_batched_tokens(max_model_len), 256
    else:
        device, label, size = "none", "no device", None
        default_tokens, default_seqs = 2048, 256
    if overhead_gib is not None and (not _is_number(overhead_gib)
                                     or not 0 <= overhead_gib < math.inf):
        raise ConfigError(f"overhead_gib={overhead_gib!r} is not allowed: it must be a number >= 0")
    return Options(
        dtype=dtype_name, quantization=quant, declared_quantization=declared,
        kv_cache_dtype=kv_name if kv_name != "auto" else dtype_name, kv_bytes=kv_bytes,
        max_model_len=max_model_len, tensor_parallel_size=tp, pipeline_parallel_size=pp,
        gpu_memory_utilization=float(gpu_memory_utilization), device=device, device_label=label,
        device_bytes=size, block_size=block_size,
        max_num_batched_tokens=_positive_int(
            "max_num_batched_tokens", max_num_batched_tokens or default_tokens),
        max_num_seqs=_positive_int("max_num_seqs", max_num_seqs or default_seqs),
        overhead_bytes=None if overhead_gib is None else int(overhead_gib * GIB),
        modern_gpu=modern,
        enforce_eager=bool(enforce_eager),
        engine=engine_name,
        notes=tuple(notes),
    )


def _gpu_scheduler_defaults(label: str, size: int) -> tuple[int, int]:
    # vLLM's V1 OpenAI server defaults (engine/arg_utils.py): big GPUs batch more tokens per step.
    if size >= 160 * GIB:
        return 16384, 1024
    if size >= 70 * GIB and "a100" not in label.lower():
        return 8192, 1024
    return 2048, 256


def check_parallelism(cfg: Mapping[str, Any], tp: int, pp: int) -> None:
    """Raise ConfigError unless vLLM accepts this TP/PP split of the model's heads and layers."""
    heads = get_int(cfg, "num_attention_heads", "n_head")
    if heads % tp:
        raise ConfigError(f"tensor_parallel_size={tp} is not allowed: it must divide "
                          f"num_attention_heads={heads}")
    kv_heads = get_int(cfg, "num_key_value_heads", default=heads)
    if not cfg.get("kv_lora_rank") and (kv_heads % tp if kv_heads >= tp else tp % kv_heads):
        raise ConfigError(f"tensor_parallel_size={tp} is not allowed: with num_key_value_heads="
                          f"{kv_heads} it must divide it or be a multiple of it")
    layers = get_int(cfg, "num_hidden_layers", "num_layers", "n_layer")
    if pp > layers:
        raise ConfigError(f"pipeline_parallel_size={pp} is not allowed: the model has only "
                          f"{layers} layers")
