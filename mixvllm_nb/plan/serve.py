"""The plan of what a :class:`~mixvllm_nb.config.ServeConfig` would launch on this machine."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .planner import MemoryPlan, plan

if TYPE_CHECKING:
    from ..config import ServeConfig


def plan_for_config(config: ServeConfig, *, gpu: str | float | None = None) -> MemoryPlan:
    """Return the memory plan for ``config``: on the detected GPU (or ``gpu``), else the CPU build.

    The defaults are the ones the vLLM backend applies: float32 and eager mode on a CPU, the
    embedded model when none is named (its converted folder, so weights are read exactly).
    """
    from ..gpu import detect_gpus
    from ..models import MixVLLMError, resolve_default_model

    inference = config.inference
    model = config.model.name
    if model is None:
        try:
            model = resolve_default_model(prepare=False).model
        except MixVLLMError as exc:
            raise ConfigError(f"the default model is not prepared yet: {exc}") from None
    gpus = detect_gpus()
    on_cpu = gpu is None and not gpus
    kwargs: dict = {
        "dtype": inference.dtype or ("float32" if on_cpu else "auto"),
        "quantization": inference.quantization,
        "kv_cache_dtype": inference.kv_cache_dtype,
        "max_model_len": inference.max_model_len,
        "tensor_parallel_size": inference.tensor_parallel_size,
        "pipeline_parallel_size": inference.pipeline_parallel_size,
        "gpu_memory_utilization": inference.gpu_memory_utilization,
        "max_num_seqs": inference.max_num_seqs,
        "max_num_batched_tokens": inference.max_num_batched_tokens,
        "enforce_eager": bool(inference.enforce_eager or (inference.enforce_eager is None and on_cpu)),
    }
    if on_cpu:
        kwargs["cpu_kv_cache_gib"] = inference.cpu_kv_cache_gib
    else:
        kwargs["gpu"] = gpu if gpu is not None else _detected(gpus[0])
    return plan(model, **kwargs)


def _detected(found: Any) -> str | float:
    """Return the detected GPU's name when the GPU table knows it (its bf16/fp8 support then
    counts: a T4 has neither), else its memory in GiB as the driver reports it."""
    from .gpus import find_gpu

    try:
        return find_gpu(found.name).name
    except ValueError:
        return found.total_memory / 2**30
