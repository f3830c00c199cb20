"""The memory planner against published model sizes and vLLM's own KV cache arithmetic.

No server and no weights: configs of real models live in tests/data/model_configs, and the
safetensors tests write tiny files with struct + json. The CPU numbers must equal what vLLM
0.32 logged for SmolLM2-135M (docs/FINDINGS.md, tests/data/vllm_cpu_startup.log).
"""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from mixvllm_nb.plan import (
    count_parameters,
    find_gpu,
    parse_vllm_kv_log,
    plan,
    pp_partition,
    read_safetensors_header,
)

CONFIGS = Path(__file__).parent / "data" / "model_configs"
GIB = 1024**3


def config(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


# Sizes as the model cards / Hugging Face pages state them (tied embeddings counted once).
PUBLISHED = {
    "llama-3.1-8b": 8.03e9,
    "llama-3.1-70b": 70.6e9,
    "qwen2.5-0.5b": 0.49e9,
    "qwen2.5-7b": 7.62e9,
    "qwen2.5-72b": 72.7e9,
    "mistral-7b-v0.1": 7.24e9,
    "mixtral-8x7b": 46.7e9,
    "phi-3-mini-4k": 3.82e9,
    "gemma-2-9b": 9.24e9,
    "deepseek-v2-lite": 15.7e9,
    "gpt-oss-20b": 20.9e9,
    "qwen2.5-vl-3b": 3.75e9,
    "smollm2-135m-instruct": 134.5e6,
}


@pytest.mark.parametrize(("name", "published"), sorted(PUBLISHED.items()))
def test_parameter_count_matches_published_size(name, published):
    total = count_parameters(config(name)).total
    assert abs(total - published) / published < 0.02, f"{name}: {total:,} vs {published:,.0f}"


@pytest.mark.parametrize(
    ("name", "exact"),
    [
        # Exact counts of the safetensors checkpoints, as Hugging Face reports them.
        ("llama-3.1-8b", 8_030_261_248),
        ("qwen2.5-0.5b", 494_032_768),
        ("qwen2.5-7b", 7_615_616_512),
        ("mistral-7b-v0.1", 7_241_732_096),
        ("mixtral-8x7b", 46_702_792_704),
        ("phi-3-mini-4k", 3_821_079_552),
        ("gemma-2-9b", 9_241_705_984),
        ("smollm2-135m-instruct", 134_515_008),
    ],
)
def test_parameter_count_is_exact_for_dense_and_moe_models(name, exact):
    assert count_parameters(config(name)).total == exact


def test_every_shipped_config_plans_without_a_device():
    for path in sorted(CONFIGS.glob("*.json")):
        result = plan(path)
        assert result.weights_bytes > 0 and result.kv_bytes_per_token > 0, path.name
        assert result.fits is None and result.kv_cache_tokens is None


@pytest.mark.parametrize(
    ("name", "kwargs", "per_token"),
    [
        ("llama-3.1-8b", {}, 131072),  # 32 layers x 2 x 8 KV heads x 128 x 2 bytes
        ("llama-3.1-70b", {}, 327680),
        ("llama-3.1-8b", {"kv_cache_dtype": "fp8"}, 65536),
        ("smollm2-135m-instruct", {"dtype": "float32"}, 46080),
        ("mistral-7b-v0.1", {}, 131072),
        ("qwen2.5-7b", {}, 57344),  # 28 x 2 x 4 x 128 x 2
        ("gemma-2-9b", {}, 344064),  # head_dim 256 from the config, not 3584 / 16
        ("gpt-oss-20b", {}, 49152),
        ("deepseek-v2-lite", {}, 31104),  # MLA: 27 x (512 + 64) x 2, no factor 2
        ("phi-3-mini-4k", {}, 393216),  # no GQA: 32 KV heads
    ],
)
def test_kv_bytes_per_token(name, kwargs, per_token):
    assert plan(CONFIGS / f"{name}.json", **kwargs).kv_bytes_per_token == per_token


SMOL = CONFIGS / "smollm2-135m-instruct.json"


@pytest.mark.parametrize(
    ("dtype", "gib", "max_len", "tokens", "concurrency"),
    [
        # vLLM 0.32 CPU: "CPU KV cache size: 23,296 tokens, Maximum concurrency for 2,048 tokens
        # per request: 11.38x" (float32, VLLM_CPU_KVCACHE_SPACE=1); bfloat16 doubles it.
        ("float32", 1, 2048, 23296, 11.38),
        ("float32", 1, 8192, 23296, 2.84),  # the line in tests/data/vllm_cpu_startup.log
        ("bfloat16", 1, 2048, 46592, 22.75),
        ("float32", 2, 2048, 46592, 22.75),
        # measured on the real server (tests/test_plan_live.py): blocks of 128, not 16 (93,200)
        ("bfloat16", 2, 2048, 93184, 45.5),
    ],
)
def test_cpu_kv_cache_equals_vllm_log(dtype, gib, max_len, tokens, concurrency):
    result = plan(SMOL, dtype=dtype, cpu_kv_cache_gib=gib, max_model_len=max_len)
    per_token = 2 * 30 * 3 * 64 * (4 if dtype == "float32" else 2)
    assert tokens == math.floor(gib * GIB / per_token / 128) * 128  # vLLM's CPU block size is 128
    assert result.kv_cache_tokens == tokens
    assert result.max_concurrency == concurrency
    assert result.fits is True and result.advice == []


def test_max_model_len_not_a_block_multiple_uses_vllms_rounding():
    # vLLM logs int(num_blocks / ceil(len / 128) * len) on CPU: 182 blocks / 8 per request x 1000.
    result = plan(SMOL, dtype="float32", cpu_kv_cache_gib=1, max_model_len=1000)
    assert result.kv_blocks == 182
    assert result.kv_cache_tokens == 22750 and result.max_concurrency == 22.75
    on_gpu_blocks = plan(SMOL, dtype="float32", cpu_kv_cache_gib=1, max_model_len=1000, block_size=16)
    assert on_gpu_blocks.kv_blocks == 1456 and on_gpu_blocks.kv_cache_tokens == 23111


def test_compare_with_a_real_vllm_log():
    log = (
        "INFO 11-24 22:17:23 [cpu_worker.py:260] Explicitly set (1.0/9.84) GiB for KV cache\n"
        "INFO 11-24 22:17:23 [kv_cache_utils.py:2327] CPU KV cache size: 23,296 tokens, "
        "Maximum concurrency for 8,192 tokens per request: 2.84x\n"
    )
    assert parse_vllm_kv_log(log) == (23296, 2.84, 8192)
    comparison = plan(SMOL, dtype="float32", cpu_kv_cache_gib=1).compare_with_log(log)
    assert comparison.matches and comparison.token_ratio == 1.0
    assert "exact match" in str(comparison)
    other = plan(SMOL, dtype="float32", cpu_kv_cache_gib=1, max_model_len=4096)
    assert not other.compare_with_log(log).same_max_model_len
    assert "max_model_len=8,192" in str(other.compare_with_log(log))


def test_committed_startup_log_matches_the_plan():
    log = Path(__file__).parent / "data" / "vllm_cpu_startup.log"
    parsed = parse_vllm_kv_log(log.read_text())
    assert parsed is not None
    tokens, _, max_len = parsed
    result = plan(SMOL, dtype="float32", cpu_kv_cache_gib=1, max_model_len=max_len)
    assert result.compare_with_log(log.read_text()).matches, (tokens, result.kv_cache_tokens)


def test_converted_smollm2_folder_matches_the_log_exactly():
    """The real converted checkpoint (the setup prepares it): exact sizes from its header."""
    from mixvllm_nb.models import prepare_default_model

    folder = prepare_default_model()
    log = Path(__file__).parent / "data" / "vllm_cpu_startup.log"
    result = plan(folder, dtype="float32", cpu_kv_cache_gib=1)
    assert result.parameters_source == "safetensors" and result.parameters == 134_515_008
    assert result.weights_bytes == 134_515_008 * 4  # a bfloat16 file served as float32
    assert result.compare_with_log(log.read_text()).matches


def test_parse_vllm_kv_log_formats():
    assert parse_vllm_kv_log("nothing here") is None
    gpu = "GPU KV cache size: 1,234,560 tokens\nMaximum concurrency for 32,768 tokens per request: 37.68x"
    assert parse_vllm_kv_log(gpu) == (1234560, 37.68, 32768)
    assert parse_vllm_kv_log("GPU KV cache size: 512 tokens") == (512, None, None)
    with pytest.raises(ValueError, match="no 'KV cache size"):
        plan(SMOL, cpu_kv_cache_gib=1).compare_with_log("INFO starting")


def test_tensor_parallel_splits_kv_heads_and_weights():
    one = plan(CONFIGS / "llama-3.1-8b.json", gpu="H100")
    two = plan(CONFIGS / "llama-3.1-8b.json", gpu="H100", tensor_parallel_size=2)
    eight = plan(CONFIGS / "llama-3.1-8b.json", gpu="H100", tensor_parallel_size=8)
    assert two.kv_bytes_per_token_per_gpu == 65536 and eight.kv_bytes_per_token_per_gpu == 16384
    assert two.kv_bytes_per_token == one.kv_bytes_per_token == 131072
    assert two.weights_bytes_per_gpu == math.ceil(one.weights_bytes / 2)
    assert two.kv_cache_tokens > 2 * one.kv_cache_tokens  # twice the KV memory, half the cost
    assert two.device == "2 x H100-80GB"


def test_tensor_parallel_beyond_kv_heads_replicates_one_head():
    # 8 KV heads on 16 GPUs: vLLM keeps one (replicated) head per rank.
    result = plan(CONFIGS / "llama-3.1-70b.json", tensor_parallel_size=16)
    assert result.kv_bytes_per_token_per_gpu == 80 * 2 * 1 * 128 * 2


def test_mla_cache_is_replicated_under_tensor_parallelism():
    result = plan(CONFIGS / "deepseek-v2-lite.json", tensor_parallel_size=2)
    assert result.kv_bytes_per_token_per_gpu == result.kv_bytes_per_token == 31104


def test_pipeline_parallel_splits_layers():
    assert pp_partition(28, 2) == [14, 14]
    assert pp_partition(30, 4) == [7, 8, 8, 7]  # vLLM gives the remainder to middle stages
    result = plan(CONFIGS / "qwen2.5-7b.json", gpu="L4", pipeline_parallel_size=2,
                  max_model_len=32768)
    assert result.kv_bytes_per_token_per_gpu == 57344 // 2
    single = plan(CONFIGS / "qwen2.5-7b.json", gpu="L4", max_model_len=32768)
    assert result.weights_bytes_per_gpu < 0.6 * single.weights_bytes_per_gpu


def test_gpu_budget_is_usable_memory_minus_weights_and_overhead():
    llama = CONFIGS / "llama-3.1-8b.json"
    exact = plan(llama, gpu="H100", max_model_len=8192, overhead_gib=0)
    # vLLM sees 79.22 GiB of an H100's 81,559 MiB and takes 90 % of it.
    usable = int((find_gpu("H100").memory_bytes - int(0.43 * GIB)) * 0.9)
    assert abs(usable / GIB - 79.22 * 0.9) < 0.01
    assert exact.kv_budget_bytes == usable - exact.weights_bytes_per_gpu
    assert exact.kv_blocks == exact.kv_budget_bytes // (16 * 131072)
    assert exact.kv_cache_tokens == exact.kv_blocks * 16
    graphs = plan(llama, gpu="H100", max_model_len=8192)
    eager = plan(llama, gpu="H100", max_model_len=8192, enforce_eager=True)
    assert graphs.overhead_bytes - eager.overhead_bytes == GIB // 2
    assert 1 * GIB < graphs.overhead_bytes < 4 * GIB


def test_llama_70b_on_one_24_gib_gpu_does_not_fit_and_says_what_to_do():
    result = plan(CONFIGS / "llama-3.1-70b.json", gpu="RTX 4090", max_model_len=8192)
    assert result.fits is False
    assert result.kv_cache_tokens == 0 and result.kv_budget_bytes < 0
    assert result.weights_bytes > 130 * GIB
    assert any("tensor_parallel_size=" in a for a in result.advice), result.advice
    text = str(result)
    assert "NO" in text and "Advice" in text


def test_advice_to_lower_max_model_len_is_the_longest_that_fits():
    result = plan(CONFIGS / "llama-3.1-8b.json", gpu="L4")  # 131,072 context on 22.5 GiB
    assert result.fits is False and result.max_concurrency < 1
    advice = next(a for a in result.advice if a.startswith("lower max_model_len"))
    longest = int(advice.split(" to ")[1].split(" ")[0].replace(",", ""))
    assert plan(CONFIGS / "llama-3.1-8b.json", gpu="L4", max_model_len=longest).fits
    assert not plan(CONFIGS / "llama-3.1-8b.json", gpu="L4", max_model_len=longest + 16).fits
    assert any("tensor_parallel_size=2" in a for a in result.advice)


def test_advice_on_cpu_names_the_kv_cache_space():
    result = plan(SMOL, dtype="float32", cpu_kv_cache_gib=0.1)  # 8,192 context needs 0.35 GiB
    assert result.fits is False
    assert "raise cpu_kv_cache_gib (VLLM_CPU_KVCACHE_SPACE) to 1" in result.advice
    assert plan(SMOL, dtype="float32", cpu_kv_cache_gib=1).fits


def test_advice_suggests_quantization_and_utilization():
    result = plan(CONFIGS / "gemma-2-9b.json", gpu="L4")
    assert any(a.startswith("quantize: quantization='fp8'") for a in result.advice)
    tight = plan(CONFIGS / "llama-3.1-8b.json", gpu="L4", max_model_len=36864)
    assert tight.fits is False
    assert any("kv_cache_dtype='fp8'" in a for a in tight.advice)
    assert any("gpu_memory_utilization to 0.95" in a for a in tight.advice)
    assert plan(CONFIGS / "llama-3.1-8b.json", gpu="L4", max_model_len=36864,
                gpu_memory_utilization=0.95).fits
    t4 = plan(CONFIGS / "qwen2.5-7b.json", gpu="T4", max_model_len=32768)
    assert t4.dtype == "float16"  # no bfloat16 before Ampere
    assert not any("fp8" in a for a in t4.advice)  # nor fp8
    assert any("quantization='awq'" in a for a in t4.advice)


def test_quantized_weight_sizes():
    bf16 = plan(CONFIGS / "llama-3.1-8b.json").weights_bytes
    fp8 = plan(CONFIGS / "llama-3.1-8b.json", quantization="fp8").weights_bytes
    awq = plan(CONFIGS / "llama-3.1-8b.json", quantization="AWQ").weights_bytes
    embeddings = 2 * 128256 * 4096 * 2  # embed_tokens + lm_head stay bfloat16
    assert bf16 == 8_030_261_248 * 2
    linear = 8_030_261_248 - 2 * 128256 * 4096 - 65 * 4096  # all but embeddings and 65 norms
    assert fp8 == embeddings + linear * 1 + 65 * 4096 * 2
    # The published AWQ INT4 checkpoint of Llama-3.1-8B-Instruct is 5.73 GB.
    assert abs(awq - 5.73e9) / 5.73e9 < 0.02


def test_checkpoint_quantization_is_read_from_the_config():
    result = plan(CONFIGS / "gpt-oss-20b.json")
    assert result.quantization == "mxfp4"
    # The released MXFP4 checkpoint is 13.8 GB: experts 4.25 bits, everything else bfloat16.
    assert 12.5 * GIB < result.weights_bytes < 13.2 * GIB
    assert result.sliding_window_layers == 12


def test_dtype_auto_follows_vllm():
    assert plan(CONFIGS / "llama-3.1-8b.json").dtype == "bfloat16"
    gemma = plan(CONFIGS / "gemma-2-9b.json")  # published in float32
    assert gemma.dtype == "bfloat16" and any("float32" in n for n in gemma.notes)
    assert plan(CONFIGS / "gemma-2-9b.json", dtype="float32").weights_bytes == 9_241_705_984 * 4


def test_bare_sliding_window_is_full_attention_but_layer_types_are_hybrid():
    mistral = plan(CONFIGS / "mistral-7b-v0.1.json", gpu="A100-80GB")
    assert mistral.sliding_window_layers == 0
    assert any("sliding_window=4096" in n for n in mistral.notes)
    gemma = plan(CONFIGS / "gemma-2-9b.json", gpu="A100-80GB")
    assert gemma.sliding_window_layers == 21
    naive = gemma.kv_budget_bytes / (gemma.kv_bytes_per_token * gemma.max_model_len)
    # At 8,192 tokens a 4,096 window (plus 2 x 2,048 tokens in flight) saves nothing.
    assert gemma.max_concurrency == pytest.approx(naive, rel=0.01)
    # gpt-oss at 131,072 tokens: its 12 sliding layers keep ~16.5k tokens, not 131k.
    oss = plan(CONFIGS / "gpt-oss-20b.json", gpu="H100")
    naive = oss.kv_budget_bytes / (oss.kv_bytes_per_token * oss.max_model_len)
    blocks_per_request = 8192 + (-(-(128 - 1 + 2 * 8192) // 16) + 1)  # full + sliding group
    assert oss.max_concurrency == round(oss.kv_blocks / blocks_per_request, 2)
    assert oss.max_concurrency > 1.7 * naive


# --- safetensors: exact sizes from headers, written here with struct + json (no torch) -------

TINY = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8,
    "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
    "num_key_value_heads": 1, "vocab_size": 32, "max_position_embeddings": 64,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}


def tiny_tensors(cfg: dict) -> dict[str, tuple[str, list[int]]]:
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * h // cfg["num_attention_heads"]
    tensors = {"model.embed_tokens.weight": ("BF16", [v, h]), "model.norm.weight": ("BF16", [h]),
               "lm_head.weight": ("BF16", [v, h])}
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        tensors |= {
            p + "self_attn.q_proj.weight": ("BF16", [h, h]),
            p + "self_attn.k_proj.weight": ("BF16", [kv, h]),
            p + "self_attn.v_proj.weight": ("BF16", [kv, h]),
            p + "self_attn.o_proj.weight": ("BF16", [h, h]),
            p + "mlp.gate_proj.weight": ("BF16", [i, h]),
            p + "mlp.up_proj.weight": ("BF16", [i, h]),
            p + "mlp.down_proj.weight": ("BF16", [h, i]),
            p + "input_layernorm.weight": ("BF16", [h]),
            p + "post_attention_layernorm.weight": ("BF16", [h]),
        }
    return tensors


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """Write a valid safetensors file: 8-byte little-endian header length, JSON header, data."""
    sizes = {"BF16": 2, "F16": 2, "F32": 4, "U8": 1, "I32": 4}
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, (dtype, shape) in tensors.items():
        nbytes = math.prod(shape) * sizes[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(offset))


def test_read_safetensors_header(tmp_path):
    write_safetensors(tmp_path / "model.safetensors", {"a.weight": ("F32", [3, 4]),
                                                       "b.bias": ("BF16", [5])})
    tensors = {t.name: t for t in read_safetensors_header(tmp_path / "model.safetensors")}
    assert set(tensors) == {"a.weight", "b.bias"}  # __metadata__ is not a tensor
    assert tensors["a.weight"].numel == 12 and tensors["a.weight"].nbytes == 48
    assert tensors["b.bias"].dtype == "BF16" and tensors["b.bias"].shape == (5,)


def test_plan_uses_exact_safetensors_sizes(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    tensors = tiny_tensors(TINY)
    names = list(tensors)
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors",
                      {n: tensors[n] for n in names[:7]})
    write_safetensors(tmp_path / "model-00002-of-00002.safetensors",
                      {n: tensors[n] for n in names[7:]})
    numel = sum(math.prod(shape) for _, shape in tensors.values())
    assert numel == count_parameters(TINY).total  # the config estimate agrees with the file
    result = plan(tmp_path, dtype="float32", cpu_kv_cache_gib=1)
    assert result.parameters_source == "safetensors" and result.weights_source == "safetensors"
    assert result.parameters == numel
    assert result.weights_bytes == numel * 4  # vLLM casts the bf16 file to float32
    assert result.model == tmp_path.name
    awq = plan(tmp_path, quantization="awq")
    quantizable = sum(math.prod(s) for n, (_, s) in tensors.items() if "proj" in n)
    assert awq.weights_bytes == int((numel - quantizable) * 2 + quantizable * (0.5 + 2.5 / 128))


def test_prequantized_checkpoint_keeps_its_packed_bytes(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    write_safetensors(tmp_path / "model.safetensors", {
        "model.embed_tokens.weight": ("BF16", [32, 8]),
        "model.layers.0.mlp.down_proj.qweight": ("I32", [2, 8]),
        "model.layers.0.mlp.down_proj.scales": ("F16", [1, 8]),
    })
    result = plan(tmp_path, dtype="float16")
    assert result.weights_bytes == 32 * 8 * 2 + 2 * 8 * 4 + 8 * 2
    assert result.parameters_source == "config"  # packed int32 counts are not parameters


def test_bad_safetensors_header(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(struct.pack("<Q", 10) + b"not json!!")
    with pytest.raises(ValueError, match="header is not JSON"):
        read_safetensors_header(tmp_path / "bad.safetensors")
    (tmp_path / "short.safetensors").write_bytes(b"abc")
    with pytest.raises(ValueError, match="8-byte header"):
        read_safetensors_header(tmp_path / "short.safetensors")


# --- where the config comes from ----------------------------------------------------------------

def test_model_from_dict_folder_and_hub_cache(tmp_path, monkeypatch):
    assert plan(TINY).parameters == count_parameters(TINY).total
    snapshot = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(TINY))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    result = plan("acme/tiny", cpu_kv_cache_gib=1)
    assert result.model == "acme/tiny" and result.fits
    with pytest.raises(ValueError, match="not in the Hugging Face cache"):
        plan("acme/absent")


# --- GPUs -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("h100", "H100-80GB"),
        ("NVIDIA H100 80GB HBM3", "H100-80GB"),
        ("NVIDIA H100 NVL", "H100-NVL"),
        ("NVIDIA A100-SXM4-40GB", "A100-40GB"),
        ("a100-80gb", "A100-80GB"),
        ("Tesla T4", "T4"),
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
        ("rtx 3090", "RTX 3090"),
        ("l40s", "L40S"),
        ("NVIDIA A10G", "A10G"),
        ("H200", "H200"),
        ("AMD Instinct MI300X", "MI300X"),
    ],
)
def test_gpu_names(name, expected):
    assert find_gpu(name).name == expected


def test_gpu_memory_is_what_the_driver_reports():
    assert find_gpu("T4").memory_gib == 15.0  # sold as 16 GB, nvidia-smi shows 15360 MiB
    assert find_gpu("A100-80GB").memory_gib == 80.0
    assert 140 < find_gpu("H200").memory_gib < 141
    assert plan(TINY, gpu=24).device_memory_bytes == 24 * GIB


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": "int8"}, "dtype='int8' is not allowed"),
        ({"quantization": "nf4"}, "quantization='nf4' is not allowed"),
        ({"kv_cache_dtype": "int4"}, "kv_cache_dtype='int4' is not allowed"),
        ({"gpu": "A100"}, "ambiguous: say one of A100-40GB, A100-80GB"),
        ({"gpu": "B9000"}, "not a known GPU"),
        ({"gpu": -1}, "positive"),
        ({"gpu": "L4", "cpu_kv_cache_gib": 1}, "both given"),
        ({"cpu_kv_cache_gib": 0}, "cpu_kv_cache_gib=0 is not allowed"),
        ({"gpu": "L4", "gpu_memory_utilization": 0}, "0 < x <= 1"),
        ({"gpu": "L4", "gpu_memory_utilization": 1.5}, "0 < x <= 1"),
        ({"tensor_parallel_size": 3}, "must divide num_attention_heads=32"),
        ({"tensor_parallel_size": 0}, "integer >= 1"),
        ({"pipeline_parallel_size": 33}, "only 32 layers"),
        ({"max_model_len": 200_000}, "max_position_embeddings is 131072"),
        ({"max_model_len": 0}, "max_model_len=0 is not allowed"),
        ({"block_size": 15}, "block_size=15 is not allowed"),
        ({"gpu": "T4", "quantization": "fp8"}, "compute capability"),
        ({"gpu": "T4", "dtype": "bfloat16"}, "no bfloat16"),
        ({"gpu": "L4", "overhead_gib": -1}, "overhead_gib=-1 is not allowed"),
    ],
)
def test_bad_arguments_raise_one_line_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        plan(CONFIGS / "llama-3.1-8b.json", **kwargs)
    assert "\n" not in str(info.value)


def test_bad_models_raise_value_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        plan(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="has no config.json"):
        plan(tmp_path)
    with pytest.raises(ValueError, match="lacks 'hidden_size'"):
        plan({k: v for k, v in TINY.items() if k != "hidden_size"})
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        plan(tmp_path)
    with pytest.raises(ValueError, match="model=42 is not allowed"):
        plan(42)


# --- output -------------------------------------------------------------------------------------

def test_plan_renders_as_text_html_dict():
    result = plan(SMOL, dtype="float32", cpu_kv_cache_gib=1, max_model_len=2048)
    text = str(result)
    assert "23,296 tokens" in text and "11.38x" in text and "134.5 M" in text
    assert "<table>" in result._repr_html_() and "23,296 tokens" in result._repr_html_()
    data = result.to_dict()
    assert json.loads(json.dumps(data))["kv_cache_tokens"] == 23296


def test_plot_draws_the_memory_bar():
    import matplotlib

    matplotlib.use("Agg")
    ax = plan(CONFIGS / "llama-3.1-8b.json", gpu="L4", max_model_len=8192).plot()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(label.startswith("weights") for label in labels)
    assert any(label.startswith("KV cache") for label in labels)
    import matplotlib.pyplot as plt

    plt.close(ax.figure)


def test_importing_the_planner_and_metrics_is_light():
    code = ("import sys, mixvllm_nb.plan, mixvllm_nb.metrics; "
            "print([m for m in ('torch', 'vllm', 'transformers', 'numpy', 'matplotlib') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
