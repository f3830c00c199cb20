"""LoRA adapters: the ``lora:`` config and vLLM's flags, the API's one-line errors, and (marked vllm) a real
vLLM CPU server with LoRA on, loading a peft adapter trained here, through the API, the magic and REST.

The adapter is trained in the test (a few optimizer steps of peft on the embedded SmolLM2 folder, a few
seconds on CPU), so nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixvllm_nb import VLLMServer
from mixvllm_nb.adapters import adapter_rank, check_adapter_folder, load_adapter, unload_adapter
from mixvllm_nb.backends.llamacpp import LlamaCppServer
from mixvllm_nb.backends.sglang import SGLangServer
from mixvllm_nb.config import config_from_dict
from mixvllm_nb.config.options import serve_arguments
from mixvllm_nb.errors import ConfigError

MODEL = "meta-llama/Llama-2-7b-hf"


def fake_adapter(folder: Path, rank: int = 8, **extra) -> Path:
    """Write only an adapter_config.json (the checks before vLLM is asked read nothing else)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, **extra}))
    return folder


# -- config -> command (no engine) ------------------------------------------------------------------


def test_lora_section_maps_to_vllm_flags_and_runtime_loading(tmp_path):
    server = VLLMServer(MODEL, lora={"enabled": True, "max_loras": 2, "max_lora_rank": 8,
                                     "modules": {"pirate": str(tmp_path / "pirate"), "poet": "~/poet"}})
    command, env = server.get_launch_command(), server.get_launch_env()
    at = command.index("--enable-lora")
    assert command[at:at + 5] == ["--enable-lora", "--max-loras", "2", "--max-lora-rank", "8"]
    modules = command[command.index("--lora-modules") + 1:]
    assert modules[:2] == [f"pirate={tmp_path / 'pirate'}", f"poet={Path.home() / 'poet'}"]
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_lora_off_adds_nothing():
    server = VLLMServer(MODEL)
    assert not any("lora" in part for part in server.get_launch_command())
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in server.get_launch_env()


def test_lora_flags_are_serve_flags_and_keywords():
    flags = {flag for names, _ in serve_arguments() for flag in names}
    assert {"--enable-lora", "--max-loras", "--max-lora-rank"} <= flags
    config = VLLMServer(MODEL, enable_lora=True, max_lora_rank=32).config.lora
    assert (config.enabled, config.max_lora_rank, config.max_loras) == (True, 32, 1)


@pytest.mark.parametrize(("lora", "match"), [
    ({"max_lora_rank": 4}, r"lora\.max_lora_rank: allowed: 1, 8, 16.*\(got 4\)"),
    ({"max_loras": 0}, r"lora\.max_loras"),
    ({"modules": {"a/b": "/x"}}, r"adapter name 'a/b'"),
    ({"unknown": 1}, r"lora\.unknown"),
])
def test_bad_lora_config_is_one_line(lora, match):
    with pytest.raises(ConfigError, match=match) as info:
        config_from_dict({"lora": lora})
    assert "\n" not in str(info.value)


def test_modules_without_enabled_is_refused():
    with pytest.raises(ConfigError, match="lora.modules: adapters are listed but lora.enabled is false"):
        VLLMServer(MODEL, lora={"modules": {"pirate": "/x"}}).get_launch_command()


@pytest.mark.parametrize("cls", [LlamaCppServer, SGLangServer])
def test_other_engines_refuse_lora_in_one_line(cls, tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match=r"^lora\.enabled: LoRA adapters are not on this engine \((llamacpp|sglang)\)"):
        cls(str(gguf), enable_lora=True).get_launch_command()


# -- the API's checks before vLLM is asked (no engine) ----------------------------------------------


def test_adapter_rank_reads_r_and_rank_pattern(tmp_path):
    assert adapter_rank(fake_adapter(tmp_path / "a", 8)) == 8
    assert adapter_rank(fake_adapter(tmp_path / "b", 8, rank_pattern={"q_proj": 32})) == 32


def test_missing_folder_not_an_adapter_and_rank_too_big(tmp_path):
    with pytest.raises(ConfigError, match=r"adapter path '.*nowhere' does not exist"):
        check_adapter_folder(tmp_path / "nowhere", 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no adapter_config.json"):
        check_adapter_folder(tmp_path / "empty", 16)
    with pytest.raises(ConfigError, match="has rank 32, over the server's max_lora_rank 16"):
        check_adapter_folder(fake_adapter(tmp_path / "big", 32), 16)
    assert check_adapter_folder(fake_adapter(tmp_path / "ok", 16), 16) == (tmp_path / "ok").resolve()


def test_a_server_without_lora_or_on_another_engine_is_refused_before_any_request(tmp_path):
    # Unstarted servers: a refusal that reached the network would fail differently (no answer).
    folder = fake_adapter(tmp_path / "a")
    with pytest.raises(ConfigError, match="was started without LoRA; restart it with --enable-lora"):
        load_adapter(VLLMServer(MODEL), "pirate", folder)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match=r"not on this engine \(llamacpp\)"):
        unload_adapter(LlamaCppServer(str(gguf)), "pirate")
    with pytest.raises(ConfigError, match="adapter name 'a b'"):
        load_adapter(VLLMServer(MODEL, enable_lora=True), "a b", folder)
