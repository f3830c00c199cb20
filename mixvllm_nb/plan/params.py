"""Count a model's parameters from its config.json alone: embeddings, attention, MLP/MoE, norms.

Covers Llama-style decoders (Llama, Mistral, Qwen2/2.5, Phi-3, Gemma 2/3), MoE (Mixtral, Qwen-MoE,
DeepSeek-V2/V3 with MLA, gpt-oss) and the Qwen2.5-VL vision tower. Other vision towers and
non-gated MLPs are approximated; what was approximated is listed in ``ParamCount.notes``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .source import text_config

# Model types whose MLP is up -> act -> down (two matrices), not SiLU/GeLU-gated (three).
_NON_GATED = {"gpt2", "gpt_neox", "gptj", "opt", "phi", "falcon", "bloom", "gpt_bigcode",
              "starcoder2", "mpt"}
# Model types whose configs default to tied input/output embeddings when the key is absent.
_TIED_BY_DEFAULT = {"gemma", "gemma2", "gemma3", "gemma3_text"}
# Gemma 2/3 put a norm before and after both attention and MLP: four per layer.
_FOUR_NORMS = {"gemma2", "gemma3", "gemma3_text"}
# Per-head RMSNorm on q and k.
_QK_NORM = {"qwen3", "qwen3_moe", "gemma3", "gemma3_text", "olmo2"}
# Qwen2 family: bias on q/k/v but not on o_proj, without saying so in the config.
_QKV_BIAS = {"qwen2", "qwen2_moe", "qwen2_vl", "qwen2_5_vl", "qwen2_5_vl_text", "qwen2_vl_text"}


@dataclass(frozen=True)
class LayerParams:
    """Parameters of one decoder layer, split by what quantization does to them."""

    attention: int  # linear weights of the attention projections
    mlp: int  # linear weights of a dense MLP or of shared experts
    experts: int  # linear weights of routed experts (what MXFP4 compresses in gpt-oss)
    other: int  # norms, biases, routers, attention sinks: kept in the model dtype

    @property
    def total(self) -> int:
        """Return the layer's parameter count."""
        return self.attention + self.mlp + self.experts + self.other


@dataclass(frozen=True)
class ParamCount:
    """A model's parameters by part; ``total`` is what model cards call the size."""

    embedding: int
    lm_head: int  # 0 when tied to the embedding
    final_norm: int
    layers: tuple[LayerParams, ...]
    vision: int = 0
    notes: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        """Return the total parameter count (tied embeddings counted once)."""
        return (self.embedding + self.lm_head + self.final_norm + self.vision
                + sum(layer.total for layer in self.layers))


def get_int(config: Mapping[str, Any], *names: str, default: int | None = None) -> int:
    """Return the first integer field of ``names`` in the config, or ``default``, or raise."""
    for name in names:
        value = config.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"model config field {name}={value!r} is not allowed: "
                                  "it must be a non-negative integer")
            return int(value)
    if default is not None:
        return default
    raise ConfigError(f"model config lacks {names[0]!r}, which is needed to size the model")


def tied_embeddings(config: Mapping[str, Any]) -> bool:
    """Return whether lm_head shares the input embedding's weights."""
    tied = config.get("tie_word_embeddings")
    if tied is None:
        return config.get("model_type") in _TIED_BY_DEFAULT
    return bool(tied)


def head_dim(config: Mapping[str, Any]) -> int:
    """Return the attention head size: config's head_dim, else hidden_size / num_attention_heads."""
    if config.get("head_dim"):
        return get_int(config, "head_dim")
    hidden = get_int(config, "hidden_size", "d_model", "n_embd")
    heads = get_int(config, "num_attention_heads", "n_head")
    if heads == 0:
        raise ConfigError("model config has num_attention_heads=0")
    return hidden // heads


def num_experts(config: Mapping[str, Any]) -> int:
    """Return the number of routed experts (0 for a dense model)."""
    return get_int(config, "num_local_experts", "n_routed_experts", "num_experts", default=0)


def is_moe_layer(config: Mapping[str, Any], index: int) -> bool:
    """Return whether decoder layer ``index`` has routed experts instead of a dense MLP."""
    if num_experts(config) == 0:
        return False
    if "first_k_dense_replace" in config:  # DeepSeek-V2/V3
        freq = get_int(config, "moe_layer_freq", default=1) or 1
        return index >= get_int(config, "first_k_dense_replace") and index % freq == 0
    if index in (config.get("mlp_only_layers") or []):  # Qwen-MoE
        return False
    step = get_int(config, "decoder_sparse_step", default=1) or 1
    return (index + 1) % step == 0


def _attention(cfg: Mapping[str, Any], model_type: str) -> tuple[int, int]:
    """Return (linear weights, other) of one attention block."""
    hidden = get_int(cfg, "hidden_size", "d_model", "n_embd")
    heads = get_int(cfg, "num_attention_heads", "n_head")
    if cfg.get("kv_lora_rank"):  # DeepSeek multi-head latent attention
        rank = get_int(cfg, "kv_lora_rank")
        nope = get_int(cfg, "qk_nope_head_dim")
        rope = get_int(cfg, "qk_rope_head_dim")
        v_dim = get_int(cfg, "v_head_dim")
        q_rank = cfg.get("q_lora_rank")
        if q_rank:
            q = hidden * q_rank + q_rank * heads * (nope + rope)
            other = q_rank + rank  # q_a_layernorm, kv_a_layernorm
        else:
            q = hidden * heads * (nope + rope)
            other = rank
        linear = q + hidden * (rank + rope) + rank * heads * (nope + v_dim) + heads * v_dim * hidden
        return linear, other
    kv_heads = get_int(cfg, "num_key_value_heads", default=heads)
    dim = head_dim(cfg)
    q_out, kv_out = heads * dim, kv_heads * dim
    linear = hidden * q_out + 2 * hidden * kv_out + q_out * hidden
    other = 0
    if cfg.get("attention_bias"):
        other += q_out + 2 * kv_out + hidden
    elif model_type in _QKV_BIAS:
        other += q_out + 2 * kv_out
    if model_type in _QK_NORM:
        other += 2 * (q_out if model_type == "olmo2" else dim)
    if model_type == "gpt_oss":
        other += heads  # attention sinks, one learned logit per head
    return linear, other


def _mlp(cfg: Mapping[str, Any], model_type: str, index: int) -> tuple[int, int, int]:
    """Return (dense or shared linear, routed-expert linear, other) of one MLP block."""
    hidden = get_int(cfg, "hidden_size", "d_model", "n_embd")
    if not is_moe_layer(cfg, index):
        inter = get_int(cfg, "intermediate_size", "ffn_dim", "n_inner", default=4 * hidden)
        matrices = 2 if model_type in _NON_GATED else 3
        bias = inter + hidden if cfg.get("mlp_bias") else 0
        return matrices * hidden * inter, 0, bias
    experts = num_experts(cfg)
    expert_inter = get_int(cfg, "moe_intermediate_size", "intermediate_size")
    routed = experts * 3 * hidden * expert_inter
    other = hidden * experts  # router
    if model_type == "gpt_oss":
        other += experts + experts * (2 * expert_inter + hidden)  # router bias, expert biases
    if cfg.get("topk_method") == "noaux_tc":
        other += experts  # DeepSeek-V3 e_score_correction_bias
    shared = 0
    if cfg.get("n_shared_experts"):  # DeepSeek: one MLP n_shared_experts times as wide
        shared = 3 * hidden * expert_inter * get_int(cfg, "n_shared_experts")
    elif cfg.get("shared_expert_intermediate_size"):  # Qwen-MoE: shared expert + its gate
        shared = 3 * hidden * get_int(cfg, "shared_expert_intermediate_size")
        other += hidden
    return shared, routed, other


def _qwen_vision(vc: Mapping[str, Any], out_hidden: int) -> int:
    """Return the Qwen2.5-VL vision tower's parameters (gated MLP blocks + patch merger)."""
    h = get_int(vc, "hidden_size")
    inter = get_int(vc, "intermediate_size")
    depth = get_int(vc, "depth")
    patch = get_int(vc, "patch_size", "spatial_patch_size", default=14)
    temporal = get_int(vc, "temporal_patch_size", default=2)
    channels = get_int(vc, "in_chans", "in_channels", default=3)
    merge = get_int(vc, "spatial_merge_size", default=2)
    out = get_int(vc, "out_hidden_size", default=out_hidden)
    block = 2 * h + (3 * h * h + 3 * h) + (h * h + h) + 2 * (h * inter + inter) + inter * h + h
    merged = h * merge * merge
    merger = h + (merged * merged + merged) + (merged * out + out)
    return channels * temporal * patch * patch * h + depth * block + merger


def _generic_vision(vc: Mapping[str, Any], out_hidden: int) -> int:
    """Return a ViT-style estimate: LayerNorms, biased attention, a two-matrix MLP, a projector."""
    h = get_int(vc, "hidden_size", "embed_dim")
    inter = get_int(vc, "intermediate_size", default=4 * h)
    depth = get_int(vc, "num_hidden_layers", "depth")
    block = 4 * h * h + 4 * h + 2 * h * inter + inter + h + 4 * h
    return depth * block + h * out_hidden


def count_parameters(config: Mapping[str, Any]) -> ParamCount:
    """Return the parameters of a model described by its Hugging Face config.json (a dict)."""
    cfg = text_config(config)
    model_type = str(cfg.get("model_type", ""))
    notes: list[str] = []
    hidden = get_int(cfg, "hidden_size", "d_model", "n_embd")
    vocab = get_int(cfg, "vocab_size")
    n_layers = get_int(cfg, "num_hidden_layers", "num_layers", "n_layer")
    if model_type in _NON_GATED:
        notes.append(f"{model_type}: counted as a two-matrix MLP; biases are approximate")
    norms_per_layer = (4 if model_type in _FOUR_NORMS else 2) * hidden
    layers = []
    for index in range(n_layers):
        attn_linear, attn_other = _attention(cfg, model_type)
        mlp_linear, expert_linear, mlp_other = _mlp(cfg, model_type, index)
        layers.append(LayerParams(attn_linear, mlp_linear, expert_linear,
                                  attn_other + mlp_other + norms_per_layer))
    embedding = vocab * hidden
    lm_head = 0 if tied_embeddings(cfg) else vocab * hidden
    vision = 0
    vision_config = config.get("vision_config")
    if isinstance(vision_config, Mapping) and vision_config:
        if "depth" in vision_config and "intermediate_size" in vision_config:
            vision = _qwen_vision(vision_config, hidden)
            notes.append("vision tower counted with the Qwen2.5-VL layout (gated MLP, merger)")
        else:
            try:
                vision = _generic_vision(vision_config, hidden)
            except ValueError:
                vision = 0
            notes.append("vision tower approximated as a plain ViT plus a linear projector")
    return ParamCount(embedding, lm_head, hidden, tuple(layers), vision, tuple(notes))
