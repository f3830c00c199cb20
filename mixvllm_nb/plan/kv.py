"""KV cache bytes per token and vLLM's token capacity for a memory budget.

The capacity follows vLLM's v1 KV cache manager (``vllm/v1/core/kv_cache_utils.py``):
``num_blocks = budget // bytes_per_block``; a request of ``max_model_len`` tokens needs
``ceil(max_model_len / block_size)`` blocks per full-attention group; the logged
"KV cache size" is ``int(num_blocks / blocks_per_request * max_model_len)`` tokens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .params import get_int, head_dim
from .source import text_config


def cdiv(a: int, b: int) -> int:
    """Return ceil(a / b) for positive integers."""
    return -(-a // b)


@dataclass(frozen=True)
class KVSpec:
    """What one token costs in KV cache, per layer, on one tensor-parallel rank."""

    layer_bytes: int  # bytes per token per layer on one TP rank (same for every layer)
    layer_kinds: tuple[str, ...]  # "full" or "sliding", one per decoder layer
    sliding_window: int | None
    mla: bool
    kv_heads_per_rank: int
    head_size: int
    notes: tuple[str, ...] = ()

    @property
    def sliding_layers(self) -> int:
        """Return how many layers use sliding-window attention."""
        return self.layer_kinds.count("sliding")


def sliding_layer_kinds(cfg: Mapping[str, Any], n_layers: int) -> tuple[tuple[str, ...], list[str]]:
    """Return the attention kind of each layer as vLLM builds it, and notes on what was ignored.

    vLLM gives a layer a sliding window only where the model marks it: ``layer_types``
    (gpt-oss, Gemma 3, newer configs), or Gemma 2's fixed alternation. A bare ``sliding_window``
    (Mistral-7B-v0.1, Phi-3) is not applied by vLLM's Llama code, so those layers count as full.
    """
    notes: list[str] = []
    window = cfg.get("sliding_window")
    types = cfg.get("layer_types")
    if window and isinstance(types, list) and len(types) >= n_layers:
        kinds = tuple("sliding" if t == "sliding_attention" else "full" for t in types[:n_layers])
    elif window and cfg.get("model_type") == "gemma2":
        kinds = tuple("sliding" if i % 2 == 0 else "full" for i in range(n_layers))
    else:
        kinds = ("full",) * n_layers
        if window and cfg.get("use_sliding_window", True) and window < (
            cfg.get("max_position_embeddings") or 0
        ):
            notes.append(f"config's sliding_window={window} is not applied by vLLM here: "
                         "all layers are sized as full attention")
    return kinds, notes


def kv_spec(config: Mapping[str, Any], kv_bytes: float, tensor_parallel_size: int = 1) -> KVSpec:
    """Return the per-token KV cost of a model for a KV element size and a TP degree.

    Full attention stores K and V: ``2 x kv_heads x head_dim x bytes`` per layer, with the KV
    heads split across TP ranks (at least one head per rank: vLLM replicates when
    ``tp > num_key_value_heads``). DeepSeek MLA stores one latent vector,
    ``(kv_lora_rank + qk_rope_head_dim) x bytes`` per layer, replicated on every TP rank.
    """
    cfg = text_config(config)
    n_layers = get_int(cfg, "num_hidden_layers", "num_layers", "n_layer")
    kinds, notes = sliding_layer_kinds(cfg, n_layers)
    window = get_int(cfg, "sliding_window") if "sliding" in kinds else None
    if cfg.get("kv_lora_rank"):
        size = get_int(cfg, "kv_lora_rank") + get_int(cfg, "qk_rope_head_dim")
        notes.append("DeepSeek MLA: one latent vector per token and layer, replicated across TP")
        return KVSpec(int(size * kv_bytes), kinds, window, True, 1, size, tuple(notes))
    heads = get_int(cfg, "num_attention_heads", "n_head")
    kv_heads = get_int(cfg, "num_key_value_heads", default=heads)
    per_rank = max(1, kv_heads // tensor_parallel_size)
    size = head_dim(cfg)
    return KVSpec(int(2 * per_rank * size * kv_bytes), kinds, window, False, per_rank, size,
                  tuple(notes))


def _groups(kinds: tuple[str, ...]) -> tuple[int, int, int]:
    """Return (layers per group, full groups, sliding groups) as vLLM groups them."""
    n_full, n_sliding = kinds.count("full"), kinds.count("sliding")
    counts = [n for n in (n_full, n_sliding) if n]
    group_size = min(counts)
    if max(counts) < 1.5 * group_size:  # vLLM pads the smaller kind instead of splitting
        group_size = max(counts)
    return group_size, cdiv(n_full, group_size), cdiv(n_sliding, group_size)


def _sliding_blocks(spec: KVSpec, block_size: int, max_model_len: int, in_flight: int) -> int:
    # A sliding-window layer keeps the last window-1 tokens plus the tokens still in flight,
    # and one extra block because the window rarely starts at a block boundary.
    if not spec.sliding_window:
        return cdiv(max_model_len, block_size)
    tokens = min(spec.sliding_window - 1 + in_flight, max_model_len)
    return cdiv(tokens, block_size) + 1


@dataclass(frozen=True)
class KVCapacity:
    """vLLM's KV cache for one budget: blocks, tokens as it logs them, and max concurrency."""

    num_blocks: int
    blocks_per_request: int
    tokens: int
    max_concurrency: float


def kv_capacity(
    spec: KVSpec,
    kinds: tuple[str, ...],
    budget_bytes: int,
    *,
    block_size: int,
    max_model_len: int,
    max_in_flight_tokens: int,
) -> KVCapacity:
    """Return the KV capacity of the layers ``kinds`` (one pipeline stage) in ``budget_bytes``.

    Hybrid models (full + sliding-window layers) are grouped as vLLM's hybrid KV cache manager
    does: groups of equal size share one block pool; a sliding-window group holds at most
    ``window - 1 + in-flight tokens`` per request. Page sizes are assumed equal across layers.
    """
    group_size, full_groups, sliding_groups = _groups(kinds)
    blocks_per_request = (full_groups * cdiv(max_model_len, block_size)
                          + sliding_groups * _sliding_blocks(spec, block_size, max_model_len,
                                                             max_in_flight_tokens))
    page = spec.layer_bytes * block_size
    num_blocks = max(0, budget_bytes) // (page * group_size)
    concurrency = num_blocks / blocks_per_request
    return KVCapacity(num_blocks, blocks_per_request, int(concurrency * max_model_len), concurrency)


def tokens_needed_bytes(
    spec: KVSpec,
    kinds: tuple[str, ...],
    *,
    block_size: int,
    max_model_len: int,
    max_in_flight_tokens: int,
    concurrency: float = 1.0,
) -> int:
    """Return the KV budget, in bytes, that gives ``concurrency`` requests of max_model_len."""
    probe = kv_capacity(spec, kinds, 0, block_size=block_size, max_model_len=max_model_len,
                        max_in_flight_tokens=max_in_flight_tokens)
    blocks = math.ceil(probe.blocks_per_request * concurrency)
    return blocks * spec.layer_bytes * block_size * _groups(kinds)[0]
