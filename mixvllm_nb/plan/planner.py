"""Plan a vLLM deployment's memory: weights, KV cache per token, KV capacity, and what to change.

``plan(model, gpu="L4")`` or ``plan(model, cpu_kv_cache_gib=4)`` returns a :class:`MemoryPlan`.
On the CPU the KV budget is exactly ``cpu_kv_cache_gib`` GiB (vLLM's VLLM_CPU_KVCACHE_SPACE),
so the token count equals vLLM's log line. On a GPU the budget of each GPU is::

    (total - CUDA's reserve) x gpu_memory_utilization - weights - overhead
    overhead = tokens x (3 ffn / tp + 3 hidden) x 2 B      activations of one profiling step
             + copies x max_num_seqs x vocab x 4 B          the dummy sampler's float32 logits
             + fixed + CUDA graphs + 1.25 GiB if tp x pp > 1 (not on GeForce cards)

``tokens``/``max_num_seqs`` are vLLM's scheduler defaults for the engine and GPU (V1: 2,048/256,
or 8,192/1,024 on 70 GiB+ GPUs other than A100; V0: max_model_len, 2,048 above 32K). Per engine
(``engine=``; :data:`overhead.ENGINES`): ``"v1"`` (vLLM >= 0.19, the default) copies 2, fixed
0.10 GiB, graphs 0.5 GiB unless ``enforce_eager``; ``"v1-pre0.19"`` the same without graphs;
``"v0"`` fixed 0.30 GiB and, instead of the copies, the larger of the activations and the dummy
sampler's sort of max_num_seqs x vocab logits (38 B each, :func:`overhead.sampler_peak_bytes`).
Where the constants come from: 14 real start-up logs (tests/data/gpu_logs: RTX 3090, RTX 4090
x2, A10, A100 40/80 GB, H100; vLLM 0.6.4-0.19; Llama, Qwen, Phi-4 GPTQ, gpt-oss). The V0 peaks
are reproduced within 0.04 GiB: the forward pass at 20k/29k tokens (2.07/2.99 GiB), the sampler
at 2,048/8,192 (Phi-4 0.94, Llama-3 1.26 GiB) and on the driver rank of two 4090s (1.2 GiB over
the other rank); fixed is what the V1 logs leave once activations and logits are counted
(0.09-0.10 GiB on three) and the median V0 non_torch_memory; the TP term stays under the 1.79 GiB
rise of an H100 development build (vLLM PR 10511). tests/test_plan_gpu_logs.py reports the errors.
Pass ``overhead_gib`` to use the figure from a real log instead.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..errors import ConfigError
from . import render
from .kv import kv_capacity, kv_spec, tokens_needed_bytes
from .options import (
    CUDA_RESERVED_BYTES,
    GIB,
    QUANT_BYTES,
    Options,
    check_parallelism,
    resolve_options,
)
from .overhead import ENGINES, estimate_gpu_overhead
from .params import ParamCount, count_parameters
from .safetensors import FLOAT_DTYPES, TensorInfo, is_quantizable, read_checkpoint
from .source import ModelSource, load_model_source, text_config
from .vllm_log import LogComparison, parse_vllm_kv_log

_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass
class MemoryPlan:
    """Where the memory of a vLLM deployment goes, per GPU, and whether it fits."""

    model: str
    architecture: str
    device: str
    dtype: str
    quantization: str | None
    kv_cache_dtype: str
    parameters: int
    parameters_source: str  # "safetensors" (exact) or "config" (counted from shapes)
    weights_bytes: int  # whole model, in the serving dtype / quantization
    weights_source: str
    weights_bytes_per_gpu: int  # the heaviest pipeline stage, split over TP ranks
    kv_bytes_per_token: int  # whole model, all layers, no parallelism
    kv_bytes_per_token_per_gpu: int  # on one GPU: KV heads split by TP, layers by PP
    num_layers: int
    sliding_window_layers: int
    max_model_len: int
    block_size: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    gpu_memory_utilization: float | None  # None on the CPU
    device_memory_bytes: int | None  # one GPU's total as nvidia-smi lists it
    overhead_bytes: int | None  # estimated activations + CUDA context/graphs, per GPU
    kv_budget_bytes: int | None  # per GPU (or the CPU KV space); negative: weights do not fit
    kv_blocks: int | None
    kv_cache_tokens: int | None  # as vLLM logs "KV cache size: N tokens"
    max_concurrency: float | None  # requests of max_model_len at once, 2 decimals like vLLM
    fits: bool | None  # None when no device was given
    advice: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return the plan as JSON-ready data (bytes as integers)."""
        return asdict(self)

    def compare_with_log(self, log_text: str) -> LogComparison:
        """Return this plan next to the KV cache size a vLLM start-up log reported."""
        parsed = parse_vllm_kv_log(log_text)
        if parsed is None:
            raise ConfigError("the log has no 'KV cache size: N tokens' line (is it a vLLM start-up "
                              "log, after the engine initialised?)")
        tokens, concurrency, max_len = parsed
        return LogComparison(self.kv_cache_tokens, self.max_concurrency, self.max_model_len,
                             tokens, concurrency, max_len)

    def rows(self) -> list[tuple[str, str]]:
        """Return the plan as (label, value) rows, the content of the text and HTML tables."""
        return render.rows(self)

    def __str__(self) -> str:
        return render.text(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """Show the readable table, not the dataclass fields, in a terminal IPython."""
        printer.text(str(self))

    def _repr_html_(self) -> str:
        return render.html(self)

    def plot(self, ax: Any = None) -> Any:
        """Draw one GPU's memory (weights, overhead, KV cache, headroom); return the axes."""
        return render.plot(self, ax)


@dataclass(frozen=True)
class _Model:
    """Everything read from disk once: config, parameter count, checkpoint tensors."""

    source: ModelSource
    cfg: dict[str, Any]  # the text (language-model) config
    params: ParamCount
    tensors: tuple[TensorInfo, ...]


def plan(
    model: str | os.PathLike[str] | Mapping[str, Any],
    *,
    dtype: str = "auto",
    quantization: str | None = None,
    kv_cache_dtype: str = "auto",
    max_model_len: int | None = None,
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.9,
    gpu: str | float | None = None,
    cpu_kv_cache_gib: float | None = None,
    block_size: int | None = None,
    max_num_batched_tokens: int | None = None,
    max_num_seqs: int | None = None,
    overhead_gib: float | None = None,
    enforce_eager: bool = False,
    engine: str = "v1",
) -> MemoryPlan:
    """Return the memory plan of serving ``model`` with vLLM on a GPU, on the CPU, or sizes only.

    ``model``: a folder with config.json (and *.safetensors for exact weight sizes), a
    config.json path, a config dict, or a hub id already in the local Hugging Face cache.
    ``gpu``: a name from the GPU table ("L4", "H100", "RTX 4090", ...) or memory in GiB.
    ``cpu_kv_cache_gib``: plan the CPU build with this KV cache (VLLM_CPU_KVCACHE_SPACE).
    With neither, the plan gives weights and KV bytes per token but no capacity.
    ``max_num_batched_tokens``/``max_num_seqs`` default to vLLM's server defaults for the device;
    they size the activation estimate and sliding-window layers. ``overhead_gib`` replaces the
    GPU activation/overhead estimate; ``enforce_eager`` drops its CUDA-graph part. ``engine``:
    the vLLM generation whose profiling to model, "v1" (0.19+), "v1-pre0.19" or "v0".
    """
    source = load_model_source(model)
    cfg = text_config(source.config)
    tensors = tuple(read_checkpoint(source.folder)) if source.folder else ()
    loaded = _Model(source, cfg, count_parameters(source.config), tensors)
    opts = resolve_options(
        source.config, cfg, dtype=dtype, quantization=quantization,
        kv_cache_dtype=kv_cache_dtype, max_model_len=max_model_len,
        tensor_parallel_size=tensor_parallel_size, pipeline_parallel_size=pipeline_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization, gpu=gpu, cpu_kv_cache_gib=cpu_kv_cache_gib,
        block_size=block_size, max_num_batched_tokens=max_num_batched_tokens,
        max_num_seqs=max_num_seqs, overhead_gib=overhead_gib, enforce_eager=enforce_eager,
        engine=engine,
    )
    result = _build(loaded, opts)
    result.advice = _advise(loaded, opts, result)
    return result


def pp_partition(num_layers: int, pp: int) -> list[int]:
    """Return the layer count of each pipeline stage, as vLLM's get_pp_indices splits them."""
    parts = [num_layers // pp] * pp
    # The remainder goes to the stages before the last one (which also holds lm_head).
    for i in range(2, num_layers % pp + 2):
        parts[-i] += 1
    return parts


def _stage_weights(loaded: _Model, opts: Options) -> tuple[list[int], int, str]:
    """Return (bytes per pipeline stage before TP, total bytes, source) of the weights."""
    n_layers = len(loaded.params.layers)
    layer_bytes = [0.0] * n_layers
    first = last = 0.0
    pre_quantized = opts.declared_quantization is not None
    if loaded.tensors:
        pre_quantized = pre_quantized or any(t.dtype not in FLOAT_DTYPES for t in loaded.tensors)
        for t in loaded.tensors:
            if t.dtype not in FLOAT_DTYPES:
                size = float(t.nbytes)  # packed quantized data stays as stored
            elif opts.quantization and not pre_quantized and is_quantizable(t.name, t.shape):
                size = t.numel * QUANT_BYTES[opts.quantization]
            else:
                size = float(t.numel * opts.dtype_bytes)  # vLLM casts floats to the serving dtype
            match = _LAYER_INDEX.search(t.name)
            if match and "vision" not in t.name and "visual" not in t.name \
                    and int(match[1]) < n_layers:
                layer_bytes[int(match[1])] += size
            elif "lm_head" in t.name or t.name.endswith("model.norm.weight"):
                last += size
            else:
                first += size
        source = "safetensors"
    else:
        d = opts.dtype_bytes
        q = QUANT_BYTES[opts.quantization] if opts.quantization else d
        dense_q = d if opts.quantization == "mxfp4" else q  # MXFP4 compresses only the experts
        for i, layer in enumerate(loaded.params.layers):
            layer_bytes[i] = (layer.attention * dense_q + layer.mlp * dense_q
                              + layer.experts * q + layer.other * d)
        first = (loaded.params.embedding + loaded.params.vision) * d
        last = (loaded.params.lm_head + loaded.params.final_norm) * d
        source = "config"
    total = int(first + last + sum(layer_bytes))
    pp = opts.pipeline_parallel_size
    if pp > 1 and loaded.params.lm_head == 0:
        last += loaded.params.embedding * opts.dtype_bytes  # the last stage needs its own lm_head
    stages, start = [], 0
    for i, count in enumerate(pp_partition(n_layers, pp)):
        size = sum(layer_bytes[start:start + count])
        size += (first if i == 0 else 0) + (last if i == pp - 1 else 0)
        stages.append(int(size))
        start += count
    return stages, total, source


def _in_flight_tokens(opts: Options) -> int:
    # vLLM keeps up to this many scheduled-but-unsettled tokens: 2 batches with async scheduling
    # (GPU default, single stage), one per stage otherwise (CPU turns async scheduling off).
    pp = opts.pipeline_parallel_size
    batches = 2 if opts.device == "gpu" and pp == 1 else pp
    return batches * opts.max_num_batched_tokens


def _build(loaded: _Model, opts: Options) -> MemoryPlan:
    cfg, tp, pp = loaded.cfg, opts.tensor_parallel_size, opts.pipeline_parallel_size
    spec = kv_spec(cfg, opts.kv_bytes, tp)
    full_spec = kv_spec(cfg, opts.kv_bytes, 1)
    n_layers = len(spec.layer_kinds)
    stage_kinds, start = [], 0
    for count in pp_partition(n_layers, pp):
        stage_kinds.append(spec.layer_kinds[start:start + count])
        start += count
    stage_bytes, weights_total, weights_source = _stage_weights(loaded, opts)
    per_gpu = [math.ceil(b / tp) for b in stage_bytes]
    notes = list(opts.notes) + list(loaded.params.notes) + list(spec.notes)
    if tp > 1:
        notes.append("tensor parallelism splits every weight evenly (replicated norms ignored)")
    params_source = "config"
    parameters = loaded.params.total
    if loaded.tensors and all(t.dtype in FLOAT_DTYPES for t in loaded.tensors):
        parameters, params_source = sum(t.numel for t in loaded.tensors), "safetensors"

    overhead = budget = None
    capacity = None
    if opts.device != "none":
        if opts.device == "cpu":
            budgets = [opts.device_bytes] * pp  # VLLM_CPU_KVCACHE_SPACE is the KV cache, exactly
        else:
            overhead = estimate_gpu_overhead(cfg, opts)
            if opts.overhead_bytes is None:
                notes.append(f"GPU overhead modelled on {ENGINES[opts.engine].versions} "
                             f"(engine={opts.engine!r})")
            visible = max(0, opts.device_bytes - CUDA_RESERVED_BYTES)
            usable = int(visible * opts.gpu_memory_utilization)
            budgets = [usable - w - overhead for w in per_gpu]
        caps = [kv_capacity(spec, kinds, b, block_size=opts.block_size,
                            max_model_len=opts.max_model_len,
                            max_in_flight_tokens=_in_flight_tokens(opts))
                for kinds, b in zip(stage_kinds, budgets, strict=True)]
        # Every stage must hold the same requests: the tightest one decides (vLLM takes the min).
        worst = min(range(pp), key=lambda i: caps[i].max_concurrency)
        capacity, budget = caps[worst], budgets[worst]
    concurrency = None if capacity is None else round(capacity.max_concurrency, 2)
    fits = None
    if capacity is not None:
        fits = budget > 0 and capacity.max_concurrency >= 1
    return MemoryPlan(
        model=loaded.source.label,
        architecture=_architecture(loaded.source.config),
        device=opts.device_label if tp * pp == 1 else f"{tp * pp} x {opts.device_label}",
        dtype=opts.dtype,
        quantization=opts.quantization,
        kv_cache_dtype=opts.kv_cache_dtype,
        parameters=parameters,
        parameters_source=params_source,
        weights_bytes=weights_total,
        weights_bytes_per_gpu=max(per_gpu),
        weights_source=weights_source,
        kv_bytes_per_token=full_spec.layer_bytes * n_layers,
        kv_bytes_per_token_per_gpu=spec.layer_bytes * max(len(k) for k in stage_kinds),
        num_layers=n_layers,
        sliding_window_layers=spec.sliding_layers,
        max_model_len=opts.max_model_len,
        block_size=opts.block_size,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        gpu_memory_utilization=opts.gpu_memory_utilization if opts.device == "gpu" else None,
        device_memory_bytes=opts.device_bytes if opts.device == "gpu" else None,
        overhead_bytes=overhead,
        kv_budget_bytes=budget,
        kv_blocks=None if capacity is None else capacity.num_blocks,
        kv_cache_tokens=None if capacity is None else capacity.tokens,
        max_concurrency=concurrency,
        fits=fits,
        notes=notes,
    )


def _architecture(config: Mapping[str, Any]) -> str:
    archs = config.get("architectures")
    if isinstance(archs, list) and archs:
        return str(archs[0])
    return str(config.get("model_type", "unknown"))


def _fits(result: MemoryPlan) -> bool:
    return bool(result.fits)


def _advise(loaded: _Model, opts: Options, result: MemoryPlan) -> list[str]:
    """Return changes that would make the plan fit (or hold one max_model_len request)."""
    if result.fits is None or result.fits:
        return []
    advice: list[str] = []
    gib = 1 / GIB
    if result.kv_blocks:  # some KV cache exists: a shorter context fits
        longest = _longest_context(loaded, opts)
        if longest:
            advice.append(f"lower max_model_len to {longest:,} (one request of that length fits)")
    if opts.device == "cpu":
        spec = kv_spec(loaded.cfg, opts.kv_bytes, opts.tensor_parallel_size)
        need = tokens_needed_bytes(spec, spec.layer_kinds, block_size=opts.block_size,
                                   max_model_len=opts.max_model_len,
                                   max_in_flight_tokens=_in_flight_tokens(opts))
        advice.append(f"raise cpu_kv_cache_gib (VLLM_CPU_KVCACHE_SPACE) to {math.ceil(need * gib)}")
        return advice
    if opts.quantization is None:
        for method in ("fp8", "awq") if opts.modern_gpu else ("awq",):
            alt = _build(loaded, replace(opts, quantization=method))
            if _fits(alt):
                advice.append(f"quantize: quantization={method!r} makes the weights "
                              f"{alt.weights_bytes_per_gpu * gib:.1f} GiB per GPU and leaves "
                              f"{alt.kv_cache_tokens:,} tokens of KV cache")
                break
    if opts.modern_gpu and not opts.kv_cache_dtype.startswith("fp8") and result.kv_blocks:
        alt = _build(loaded, replace(opts, kv_cache_dtype="fp8", kv_bytes=1))
        if _fits(alt):
            advice.append(f"store the KV cache in fp8: kv_cache_dtype='fp8' gives "
                          f"{alt.kv_cache_tokens:,} tokens")
    for tp in (2, 4, 8, 16):
        if tp <= opts.tensor_parallel_size:
            continue
        try:
            check_parallelism(loaded.cfg, tp, opts.pipeline_parallel_size)
        except ValueError:
            continue  # this TP degree does not divide the heads
        alt = _build(loaded, replace(opts, tensor_parallel_size=tp))
        if _fits(alt):
            advice.append(f"add GPUs: tensor_parallel_size={tp} fits "
                          f"({alt.weights_bytes_per_gpu * gib:.1f} GiB of weights per GPU, "
                          f"{alt.kv_cache_tokens:,} tokens of KV cache)")
            break
    else:
        advice.append("even tensor_parallel_size=16 does not fit: quantize or use larger GPUs")
    if opts.gpu_memory_utilization < 0.95:
        alt = _build(loaded, replace(opts, gpu_memory_utilization=0.95))
        if _fits(alt):
            advice.append("raise gpu_memory_utilization to 0.95 "
                          f"({alt.kv_cache_tokens:,} tokens of KV cache)")
    return advice


def _longest_context(loaded: _Model, opts: Options) -> int:
    """Return the longest max_model_len (a multiple of block_size) that holds one request."""
    lo, hi = 0, opts.max_model_len // opts.block_size
    while lo < hi:  # binary search on blocks: capacity shrinks as the context grows
        mid = (lo + hi + 1) // 2
        if _fits(_build(loaded, replace(opts, max_model_len=mid * opts.block_size))):
            lo = mid
        else:
            hi = mid - 1
    return lo * opts.block_size


__all__ = ["MemoryPlan", "estimate_gpu_overhead", "plan", "pp_partition"]
