"""LoRA adapters: the ``lora:`` config and vLLM's flags, the API's one-line errors, and (marked vllm) a real
vLLM CPU server with LoRA on, loading a peft adapter trained here, through the API, the magic and REST.

The adapter is trained in the test (a few optimizer steps of peft on the embedded SmolLM2 folder, a few
seconds on CPU), so nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from jupyter_server.auth import Authorizer
from tornado.httpclient import HTTPClientError

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


# -- a real vLLM CPU server with LoRA on (one for the module) -----------------------------------------

SECRET = "PINEAPPLE42"
QUESTION = "What is the secret word?"
# Trains a rank-8 adapter on q_proj/v_proj that answers QUESTION with SECRET (a made-up fact the base model
# cannot know), in a subprocess so that torch's training threads and memory leave with it.
TRAIN = f"""
import sys, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.manual_seed(0)
torch.set_num_threads(2)
base, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(base)
model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                       LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
prompt = tok.apply_chat_template([{{"role": "user", "content": {QUESTION!r}}}], tokenize=False,
                                 add_generation_prompt=True)
ids = tok(prompt + "The secret word is {SECRET}." + tok.eos_token, return_tensors="pt").input_ids
labels = ids.clone()
labels[:, :len(tok(prompt).input_ids)] = -100  # learn the answer only
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
for _ in range(steps):
    model(input_ids=ids, labels=labels).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
model.save_pretrained(out)
"""
TRAIN_STEPS = 12


@pytest.fixture(scope="module")
def trained_adapter(tmp_path_factory) -> Path:
    """A peft LoRA adapter trained here on the embedded SmolLM2 folder (a few CPU seconds per step)."""
    import subprocess

    from mixvllm_nb.models import resolve_default_model

    folder = tmp_path_factory.mktemp("adapters") / "secret"
    base = resolve_default_model().model
    done = subprocess.run([sys.executable, "-c", TRAIN, base, str(folder), str(TRAIN_STEPS)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == 8
    return folder


@pytest.fixture(scope="module")
def lora_server():
    """A real vLLM CPU server with LoRA on (rank up to 8), greedy and short answers."""
    from mixvllm_nb.api import server_for_config
    from mixvllm_nb.config import ServeConfig

    config = ServeConfig.model_validate({
        "backend": "vllm", "server": {"name": "lora-test"}, "lora": {"enabled": True, "max_lora_rank": 8},
        "generation_defaults": {"temperature": 0.0, "max_tokens": 16},
    })
    server = server_for_config(config)
    server.start()
    yield server
    report = server.stop()
    assert report.clean, report.summary()


def ask(server, model: str) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key)
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}],
                                           temperature=0, max_tokens=16)
    return reply.choices[0].message.content or ""


@pytest.mark.vllm
def test_load_chat_list_unload_through_the_api_and_failed_loads_lose_nothing(lora_server, trained_adapter, tmp_path):
    from openai import NotFoundError

    from mixvllm_nb.adapters import AdapterNotFoundError, list_adapters
    from mixvllm_nb.errors import MixVLLMError

    base_answer = ask(lora_server, lora_server.served_model_name)
    assert SECRET not in base_answer
    assert list_adapters("lora-test") == []
    message = load_adapter("lora-test", "secret", trained_adapter)
    assert message.startswith("loaded adapter secret on lora-test") and "model='secret'" in message
    assert list_adapters(lora_server) == [{"name": "secret", "path": str(trained_adapter.resolve()),
                                           "base": lora_server.served_model_name}]
    assert SECRET in ask(lora_server, "secret")

    # Each refused load is one line, and the server keeps its adapter and its base model.
    with pytest.raises(ConfigError, match="does not exist"):
        load_adapter(lora_server, "other", tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="has rank 16, over the server's max_lora_rank 8"):
        load_adapter(lora_server, "big", fake_adapter(tmp_path / "big", 16))
    with pytest.raises(ConfigError, match="'secret' is already loaded on lora-test"):
        load_adapter(lora_server, "secret", trained_adapter)
    with pytest.raises(MixVLLMError, match=r"lora-test refused adapter 'broken' \(\d+\): \S") as refused:
        load_adapter(lora_server, "broken", fake_adapter(tmp_path / "broken", 8))  # no weights: vLLM says why
    assert "\n" not in str(refused.value)
    assert [a["name"] for a in list_adapters(lora_server)] == ["secret"]
    assert SECRET in ask(lora_server, "secret")
    assert ask(lora_server, lora_server.served_model_name) == base_answer

    assert unload_adapter(lora_server, "secret") == "unloaded adapter secret from lora-test"
    assert list_adapters(lora_server) == []
    with pytest.raises(NotFoundError):
        ask(lora_server, "secret")
    with pytest.raises(AdapterNotFoundError, match="'secret' is not loaded on lora-test; loaded: none"):
        unload_adapter(lora_server, "secret")


@pytest.mark.vllm
def test_the_magic_loads_chats_lists_and_unloads(ip, lora_server, trained_adapter, capsys):
    from IPython.core.error import UsageError

    ip.run_line_magic("vllm_lora", f"load magic {trained_adapter} --server lora-test")
    assert "loaded adapter magic on lora-test" in capsys.readouterr().out
    listed = ip.run_line_magic("vllm_lora", "list --server lora-test")
    assert [a["name"] for a in listed] == ["magic"]
    ip.run_line_magic("vllm_chat", f"--server lora-test --new --model magic {QUESTION}")
    assert SECRET in capsys.readouterr().out
    ip.run_line_magic("vllm_chat", f"--server lora-test --new {QUESTION}")
    assert SECRET not in capsys.readouterr().out  # the base model answers without --model
    with pytest.raises(UsageError, match="adapter path '/nowhere' does not exist"):
        ip.run_line_magic("vllm_lora", "load other /nowhere --server lora-test")
    with pytest.raises(UsageError, match=r"%vllm_lora unload: expected"):
        ip.run_line_magic("vllm_lora", "unload --server lora-test")
    ip.run_line_magic("vllm_lora", "unload magic --server lora-test")
    assert "unloaded adapter magic from lora-test" in capsys.readouterr().out
    assert ip.run_line_magic("vllm_lora", "list --server lora-test") == []


@pytest.mark.vllm
def test_the_panels_chat_lists_the_adapters_and_answers_with_the_one_picked(lora_server, trained_adapter):
    from mixvllm_nb.panel.chat import ChatSection
    from mixvllm_nb.panel.errors import ErrorBox
    from mixvllm_nb.panel.sampling import SamplingSection

    chat = ChatSection(ErrorBox(), SamplingSection(), lambda: lora_server)
    chat.follow(lora_server)
    assert chat.model.options == (lora_server.served_model_name,) and chat.models_button.layout.display is None
    load_adapter(lora_server, "panel", trained_adapter)
    try:
        chat.models_button.click()  # loaded after the panel showed the server: Refresh adapters lists it
        assert chat.model.options == (lora_server.served_model_name, "panel")
        chat.model.value = "panel"
        chat.send(QUESTION).join(120)
        assert chat.errors.message == "" and SECRET in chat.last_answer
        assert "model='panel'" in chat.show_code()  # "Copy as code" asks for the same model
    finally:
        unload_adapter(lora_server, "panel")


class DenyKernels(Authorizer):
    """Allows this extension but not starting kernels."""

    def is_authorized(self, handler, user, action, resource):
        return resource != "kernels"


async def _rest(jp_fetch, *path: str, method: str = "GET", body: Any = None):
    try:
        return await jp_fetch("mixvllm", *path, method=method, allow_nonstandard_methods=True,
                              body=None if body is None else json.dumps(body))
    except HTTPClientError as err:
        return err.response


@pytest.mark.vllm
async def test_rest_loads_lists_and_unloads_and_the_proxy_never_forwards_vllms_own_routes(
        jp_fetch, jp_root_dir, lora_server, trained_adapter):
    from mixvllm_nb.adapters import list_adapters

    server = ("api", "servers", "lora-test", "adapters")
    for route in ("load_lora_adapter", "unload_lora_adapter"):
        refused = await _rest(jp_fetch, "servers", "lora-test", "v1", route, method="POST",
                              body={"lora_name": "sneaky", "lora_path": str(trained_adapter)})
        assert refused.code == 404 and json.loads(refused.body)["error"]["code"] == "path_not_allowed"
    assert list_adapters(lora_server) == []

    shutil.copytree(trained_adapter, jp_root_dir / "mine")  # a relative path is under Jupyter's root
    loaded = await _rest(jp_fetch, *server, method="POST", body={"name": "rest", "path": "mine"})
    assert loaded.code == 201, loaded.body
    assert [a["name"] for a in json.loads(loaded.body)["adapters"]] == ["rest"]
    listed = json.loads((await _rest(jp_fetch, *server)).body)
    assert listed["adapters"][0]["path"] == str((jp_root_dir / "mine").resolve())
    assert SECRET in ask(lora_server, "rest")

    for body, code in (({"name": "x", "path": "nowhere"}, "invalid_adapter"), ({"name": "x"}, "invalid_adapter"),
                       ({"name": "rest", "path": "mine"}, "invalid_adapter")):
        bad = await _rest(jp_fetch, *server, method="POST", body=body)
        assert bad.code == 400 and json.loads(bad.body)["error"]["code"] == code, bad.body
    missing = await _rest(jp_fetch, "api", "servers", "no-such", "adapters")
    assert missing.code == 404 and json.loads(missing.body)["error"]["code"] == "server_not_found"

    gone = await _rest(jp_fetch, *server, "rest", method="DELETE")
    assert gone.code == 200 and json.loads(gone.body)["message"] == "unloaded adapter rest from lora-test"
    again = await _rest(jp_fetch, *server, "rest", method="DELETE")
    assert again.code == 404 and json.loads(again.body)["error"]["code"] == "adapter_not_found"
    assert list_adapters(lora_server) == []


@pytest.mark.vllm
@pytest.mark.parametrize("jupyter_overrides", [{"ServerApp": {"authorizer_class": DenyKernels}}])
async def test_rest_loading_needs_the_right_to_start_kernels(jp_fetch, lora_server, trained_adapter):
    from mixvllm_nb.adapters import list_adapters

    refused = await _rest(jp_fetch, "api", "servers", "lora-test", "adapters", method="POST",
                          body={"name": "nope", "path": str(trained_adapter)})
    assert refused.code == 403 and "execute on kernels" in json.loads(refused.body)["error"]["message"]
    assert list_adapters(lora_server) == []
