"""Plan a vLLM deployment's memory before starting it: weights, KV cache, what fits where.

>>> from mixvllm_nb.plan import plan
>>> plan("HuggingFaceTB/SmolLM2-135M-Instruct", cpu_kv_cache_gib=1)  # doctest: +SKIP

Light to import: only the standard library (matplotlib is imported by ``MemoryPlan.plot``).
"""

from __future__ import annotations

from .gpus import GPUS, GPUSpec, find_gpu, known_gpu_names
from .kv import KVSpec, kv_spec
from .params import ParamCount, count_parameters
from .planner import MemoryPlan, estimate_gpu_overhead, plan, pp_partition
from .safetensors import TensorInfo, read_checkpoint, read_safetensors_header
from .serve import plan_for_config
from .source import find_in_hf_cache, load_model_source
from .vllm_log import LogComparison, parse_vllm_kv_log

__all__ = [
    "GPUS",
    "GPUSpec",
    "KVSpec",
    "LogComparison",
    "MemoryPlan",
    "ParamCount",
    "TensorInfo",
    "count_parameters",
    "estimate_gpu_overhead",
    "find_gpu",
    "find_in_hf_cache",
    "known_gpu_names",
    "kv_spec",
    "load_model_source",
    "parse_vllm_kv_log",
    "plan",
    "plan_for_config",
    "pp_partition",
    "read_checkpoint",
    "read_safetensors_header",
]
