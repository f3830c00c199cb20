"""What vLLM's start-up profiling takes from one GPU besides the weights and the KV cache.

The constants are calibrated on the real start-up logs in ``tests/data/gpu_logs`` (one JSON per
log, with its source URL and the lines quoted verbatim); ``tests/test_plan_gpu_logs.py`` holds
the planner to them. See :func:`estimate_gpu_overhead` for the formula.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .params import get_int, num_experts

if TYPE_CHECKING:
    from .options import Options

GIB = 1024**3
# NCCL communicators and the custom all-reduce buffers once more than one GPU serves the model.
# V0 logs: TP=2 raised non_torch_memory from 1.79 to 3.58 GiB on H100 (vLLM PR 10511), and two
# 4090 ranks differed by about 1.2 GiB (vLLM issue 13061); no V1 log with TP>1 was found.
TENSOR_PARALLEL_BYTES = int(1.25 * GIB)


@dataclass(frozen=True)
class Engine:
    """How one generation of vLLM sizes what it keeps out of the KV cache."""

    name: str
    versions: str
    fixed_bytes: int  # memory outside the activations: CUDA context growth, cuBLAS, allocator
    logits_copies: int  # float32 (max_num_seqs x vocab) arrays the dummy sampler adds to the peak
    cuda_graph_bytes: int  # reserved for captured CUDA graphs (0: vLLM does not reserve them)


ENGINES: dict[str, Engine] = {
    # From 0.19 vLLM estimates the graphs' memory at start-up ("Estimated CUDA graph memory")
    # and leaves it out of the KV cache. 0.5 GiB is an estimate, not a fit: the one 0.19 log here
    # (gpt-oss-20b, A100 80GB) leaves about that much unexplained once its weights are counted.
    "v1": Engine("v1", "vLLM 0.19 and later, V1 engine (this project's 0.32)", int(0.10 * GIB), 2,
                 GIB // 2),
    # V1 fits (RTX 3090 Llama-3.1-8B and Qwen2.5-7B at 2,048 tokens, vLLM 0.17.1; A100 40GB
    # Llama-3.1-8B eager at 8,192 tokens, vLLM 0.15.1) leave 0.09-0.10 GiB once the activations
    # and two float32 logits arrays are counted, with or without CUDA graphs: those versions do
    # not reserve graph memory.
    "v1-pre0.19": Engine("v1-pre0.19", "vLLM 0.8-0.18, V1 engine", int(0.10 * GIB), 2, 0),
    # V0 logs: activation peaks equal the formula's (2.07 and 2.99 GiB at 20,000 and 29,000
    # tokens on a 3090), the sampler adds nothing on top; non_torch_memory read 0.05, 0.25, 0.26,
    # 0.35 (and 1.79 on a development build): the median plus the ~0.03 GiB of rotary caches
    # and buffers the weights estimate leaves out.
    "v0": Engine("v0", "vLLM 0.6-0.10 with the V0 engine", int(0.30 * GIB), 0, 0),
}


def check_engine(engine: Any) -> Engine:
    """Return the engine profile named ``engine``; raise ConfigError for an unknown name."""
    if not isinstance(engine, str) or engine.lower() not in ENGINES:
        raise ConfigError(f"engine={engine!r} is not allowed; use one of {', '.join(ENGINES)}")
    return ENGINES[engine.lower()]


def v0_batched_tokens(max_model_len: int) -> int:
    """Return V0's default max_num_batched_tokens: the whole context unless it exceeds 32K.

    ``vllm serve`` turns chunked prefill on (2,048-token chunks) above 32,768 tokens; below,
    one prefill of max_model_len must fit (vLLM 0.7-0.10, engine/arg_utils.py).
    """
    return max(max_model_len, 2048) if max_model_len <= 32768 else 2048


def estimate_gpu_overhead(cfg: Mapping[str, Any], opts: Options) -> int:
    """Return the estimated non-weight, non-KV memory of one GPU during vLLM's profiling run.

    ``activations + logits + fixed + graphs + tensor parallel`` where

    * activations: ``max_num_batched_tokens x (3 x ffn / tp + 3 x hidden) x 2 bytes``, the MLP's
      gate/up output and its activation (3 x ffn) plus residual, normed input and attention
      output (3 x hidden); MoE models use ``top_k x moe_intermediate_size`` as ffn;
    * logits: ``logits_copies x max_num_seqs x vocab x 4`` (the dummy sampler's float32 logits);
    * fixed, graphs: per engine (:data:`ENGINES`); graphs are 0 with ``enforce_eager``;
    * tensor parallel: :data:`TENSOR_PARALLEL_BYTES` when more than one GPU serves the model.
    """
    if opts.overhead_bytes is not None:
        return opts.overhead_bytes
    engine = ENGINES[opts.engine]
    hidden = get_int(cfg, "hidden_size", "d_model", "n_embd")
    ffn = get_int(cfg, "intermediate_size", "ffn_dim", "n_inner", default=4 * hidden)
    if num_experts(cfg):
        top_k = get_int(cfg, "num_experts_per_tok", "experts_per_token", default=2)
        ffn = max(ffn, top_k * get_int(cfg, "moe_intermediate_size", "intermediate_size"))
    act_bytes = 2 if opts.dtype_bytes == 2 or opts.quantization else 4
    per_token = 3 * ffn // opts.tensor_parallel_size + 3 * hidden
    activations = opts.max_num_batched_tokens * per_token * act_bytes
    logits = engine.logits_copies * opts.max_num_seqs * get_int(cfg, "vocab_size") * 4
    graphs = 0 if opts.enforce_eager else engine.cuda_graph_bytes
    world = opts.tensor_parallel_size * opts.pipeline_parallel_size
    parallel = TENSOR_PARALLEL_BYTES if world > 1 else 0
    return activations + logits + engine.fixed_bytes + graphs + parallel


__all__ = ["ENGINES", "Engine", "TENSOR_PARALLEL_BYTES", "check_engine", "estimate_gpu_overhead",
           "v0_batched_tokens"]
