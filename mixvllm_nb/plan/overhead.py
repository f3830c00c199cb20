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
from .gpus import is_geforce
from .params import get_int, num_experts

if TYPE_CHECKING:
    from .options import Options

GIB = 1024**3
# NCCL communicators and the custom all-reduce buffers once more than one GPU serves the model.
# TP=2 raised V0's non_torch_memory from 1.79 to 3.58 GiB on H100 (vLLM PR 10511: NVLink, where
# NCCL and vLLM's custom all-reduce keep device buffers); no V1 log with TP>1 was found. GeForce
# cards get none: the non-driver rank of two RTX 4090s logged 0.25 GiB non_torch_memory at TP=2
# (vLLM issue 13061), as single-GPU logs do (0.05-0.35); its ranks' 1.2 GiB difference is V0's
# sampler on the driver rank (:func:`sampler_peak_bytes`), once read as this term.
TENSOR_PARALLEL_BYTES = int(1.25 * GIB)


@dataclass(frozen=True)
class Engine:
    """How one generation of vLLM sizes what it keeps out of the KV cache."""

    name: str
    versions: str
    fixed_bytes: int  # memory outside the activations: CUDA context growth, cuBLAS, allocator
    logits_copies: int  # float32 (max_num_seqs x vocab) arrays the dummy sampler adds to the peak
    cuda_graph_bytes: int  # reserved for captured CUDA graphs (0: vLLM does not reserve them)
    sorting_sampler: bool = False  # the dummy sampler sorts max_num_seqs x vocab logits (V0)


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
    # V0 logs: activation peaks are the forward pass (2.07 and 2.99 GiB at 20,000 and 29,000
    # tokens on a 3090) or, when larger, the dummy sampler's sort (0.94 GiB for Phi-4 at 2,048
    # tokens, 1.26 GiB for Llama-3 at 8,192); non_torch_memory read 0.05, 0.25, 0.26, 0.35 (and
    # 1.79 on a development build): the median plus the ~0.03 GiB of rotary caches and buffers
    # the weights estimate leaves out.
    "v0": Engine("v0", "vLLM 0.6-0.10 with the V0 engine", int(0.30 * GIB), 0, 0, sorting_sampler=True),
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


def sampler_peak_bytes(seqs: int, vocab: int, hidden: int, tokens: int, act_bytes: int) -> int:
    """Return what V0's dummy sampler holds at its peak: the sort of ``seqs x vocab`` logits.

    vLLM's V0 profile run (worker/model_runner.py ``profile_run``, 0.6-0.10) samples every one of
    max_num_seqs dummy prompts with ``top_p=0.99, top_k=vocab-1``, so the sampler
    (model_executor/layers/sampler.py) sorts the float32 logits in ``_apply_top_k_top_p``. While
    ``logits.sort(dim=-1)`` runs, per logit: the model-dtype logits (``act_bytes``), their float32
    copy (4), the sorted values (4) and int64 indices (8), and inside PyTorch's segmented sort
    (ATen/native/cuda/SortStable.cu, 128 rows or more) an int64 index iota (8) and cub's
    alternate key and value buffers (4 + 8). The model's output hidden states stay alive too.
    """
    return seqs * vocab * (act_bytes + 36) + tokens * hidden * act_bytes


def estimate_gpu_overhead(cfg: Mapping[str, Any], opts: Options) -> int:
    """Return the estimated non-weight, non-KV memory of one GPU during vLLM's profiling run.

    ``activations + logits + fixed + graphs + tensor parallel`` where

    * activations: ``max_num_batched_tokens x (3 x ffn / tp + 3 x hidden) x 2 bytes``, the MLP's
      gate/up output and its activation (3 x ffn) plus residual, normed input and attention
      output (3 x hidden); MoE models use ``top_k x moe_intermediate_size`` as ffn;
    * logits: ``logits_copies x max_num_seqs x vocab x 4`` (the dummy sampler's float32 logits);
      V0 instead counts ``max(activations, sampler)``, :func:`sampler_peak_bytes`;
    * fixed, graphs: per engine (:data:`ENGINES`); graphs are 0 with ``enforce_eager``;
    * tensor parallel: :data:`TENSOR_PARALLEL_BYTES` when more than one GPU serves the model,
      but for GeForce cards.
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
    vocab = get_int(cfg, "vocab_size")
    logits = engine.logits_copies * opts.max_num_seqs * vocab * 4
    if engine.sorting_sampler:
        # The peak is the forward pass or the sampler that follows it, whichever is larger.
        activations = max(activations, sampler_peak_bytes(opts.max_num_seqs, vocab, hidden,
                                                          opts.max_num_batched_tokens, act_bytes))
    graphs = 0 if opts.enforce_eager else engine.cuda_graph_bytes
    world = opts.tensor_parallel_size * opts.pipeline_parallel_size
    parallel = TENSOR_PARALLEL_BYTES if world > 1 and not is_geforce(opts.device_label) else 0
    return activations + logits + engine.fixed_bytes + graphs + parallel


__all__ = ["ENGINES", "Engine", "TENSOR_PARALLEL_BYTES", "check_engine", "estimate_gpu_overhead",
           "sampler_peak_bytes", "v0_batched_tokens"]
