"""The light engine: a real llama.cpp server (llama-cpp-python) on the embedded SmolLM2, as float16 GGUF.

What Binder runs (1-2 GB of memory, no vLLM): the same process manager, registry, server-side
generation defaults and Jupyter proxy, on ``llama_cpp.server`` (through ``llamacpp_serve``). The engine choice of ``backend: auto``
is tested by deciding it for machines this one is not (no vLLM, 2 GB): only the facts it reads
(what is installed, the memory limit) are stood in for.
"""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest
from openai import OpenAI
from test_server_support import JupyterProcess

from mixvllm_nb.api import serve, server_for_config
from mixvllm_nb.backends import auto
from mixvllm_nb.backends.llamacpp import LlamaCppServer
from mixvllm_nb.client import openai_client
from mixvllm_nb.config import ServeConfig, config_from_dict
from mixvllm_nb.errors import ConfigError
from mixvllm_nb.models import DEFAULT_MODEL_ID, f16_gguf_path
from mixvllm_nb.process import registry
from mixvllm_nb.status import status_table

pytestmark = pytest.mark.vllm  # a real engine in every test

LIGHT_CONFIG = {"backend": "llamacpp", "server": {"name": "light"},
                "generation_defaults": {"temperature": 0.0, "max_tokens": 48}}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def light_server():
    server = server_for_config(config_from_dict(LIGHT_CONFIG))
    server.start()
    yield server
    report = server.stop()
    assert report.clean, report.summary()


def test_it_serves_the_float16_gguf_under_the_hub_name(light_server):
    assert isinstance(light_server, LlamaCppServer)
    assert light_server.model == str(f16_gguf_path())  # made from the shipped GGUF, no torch
    client = openai_client(light_server.base_url, light_server.api_key)
    assert [m.id for m in client.models.list().data] == [DEFAULT_MODEL_ID]


def test_any_client_gets_the_config_defaults_and_a_right_streamed_answer(light_server):
    # A plain openai client that sets nothing: temperature 0 and max_tokens 48 come from the server.
    client = openai_client(light_server.base_url, light_server.api_key)
    stream = client.chat.completions.create(model=DEFAULT_MODEL_ID, messages=QUESTION, stream=True)
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 3, pieces
    assert "Paris" in "".join(pieces)  # float16 weights; the shipped Q4_1 file answers nonsense here
    poem = [{"role": "user", "content": "Write a long poem about the sea."}]
    assert client.chat.completions.create(model=DEFAULT_MODEL_ID, messages=poem).usage.completion_tokens == 48
    short = client.chat.completions.create(model=DEFAULT_MODEL_ID, messages=poem, max_tokens=5)
    assert short.usage.completion_tokens == 5  # what the request sets wins
    greedy = {client.completions.create(model=DEFAULT_MODEL_ID, prompt="Once upon a time").choices[0].text
              for _ in range(2)}
    assert len(greedy) == 1  # temperature 0 from the server: the same continuation twice


def test_generate_works_though_llamacpp_reports_no_usage_in_streams(light_server):
    reply = light_server.generate("Once upon a time", max_tokens=6)
    assert reply.text and reply.usage is None  # llama.cpp accepts stream_options but sends no usage
    assert reply.stats.pieces <= 6 and reply.stats.summary().startswith(f"{reply.stats.pieces} pieces in ")


def test_the_key_guards_it_and_never_reaches_the_command_line(light_server):
    import openai

    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=f"{light_server.base_url}/v1", api_key="wrong", max_retries=0).models.list()
    cmdline = " ".join(psutil.Process(light_server.pid).cmdline())
    assert light_server.api_key not in cmdline
    assert light_server.api_key not in open(light_server.log_path).read()


def test_status_says_what_this_engine_does_not_report(light_server):
    row = dict(zip(status_table("light").columns, status_table("light").rows[0], strict=True))
    assert "ready" in row["state"]
    assert (row["KV cache tokens"], row["max concurrency"]) == ("2,048", "1.00x")  # from llama.cpp's log
    assert row["running"] == row["gen tokens/s"] == "n/a on llama.cpp"  # it has no /metrics


def test_the_jupyter_proxy_streams_from_it(light_server, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    jupyter = JupyterProcess(root, tmp_path).start()
    try:
        client = OpenAI(base_url=jupyter.proxy_v1("light"), api_key=jupyter.token, max_retries=0)
        stream = client.chat.completions.create(model=DEFAULT_MODEL_ID, messages=QUESTION, stream=True,
                                                temperature=0, max_tokens=24)
        pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
        assert len(pieces) > 3 and "Paris" in "".join(pieces)
    finally:
        jupyter.stop()


def test_a_second_identical_config_reuses_it(light_server):
    result = serve(config_from_dict(LIGHT_CONFIG))
    assert result.outcome == "Reused" and result.server is light_server
    assert result.engine == "llama.cpp"


def test_top_k_minus_one_means_all_tokens_as_on_vllm(light_server):
    client = openai_client(light_server.base_url, light_server.api_key)
    reply = client.chat.completions.create(model=DEFAULT_MODEL_ID, messages=QUESTION, extra_body={"top_k": -1})
    assert "Paris" in reply.choices[0].message.content  # llama.cpp alone refuses -1 (422)


def test_stop_leaves_nothing_and_frees_the_port(monkeypatch):
    # The user's environment must not steer the server: llama_cpp.server reads these names too.
    monkeypatch.setenv("CONFIG_FILE", "/no/such/config.yaml")
    monkeypatch.setenv("PORT", "1")
    monkeypatch.setenv("API_KEY", "a-key-of-the-users-shell")
    server = server_for_config(config_from_dict({"backend": "llamacpp", "server": {"name": "light-stop"}}))
    server.start()
    assert server.is_ready() and server.api_key != "a-key-of-the-users-shell"
    pid, port = server.pid, server.port
    report = server.stop()
    assert report.clean and report.port_free, report.summary()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert registry.get("light-stop", missing_ok=True) is None
    assert port not in {c.laddr.port for c in psutil.net_connections("tcp") if c.status == "LISTEN"}


@pytest.mark.parametrize(("data", "expected"), [
    ({"inference": {"tensor_parallel_size": 2}},
     "inference.tensor_parallel_size: 2 is not supported by the llamacpp backend (allowed: 1)"),
    ({"inference": {"quantization": "awq"}}, "inference.quantization: 'awq' is not supported"),
    ({"inference": {"dtype": "bfloat16"}}, "inference.dtype: 'bfloat16' is not supported by the llamacpp backend"),
    ({"model": {"name": "Qwen/Qwen2.5-0.5B-Instruct"}}, "is not a .gguf file"),
])
def test_settings_it_cannot_honour_are_one_line_errors(data, expected):
    before = [r.name for r in registry.list_records()]
    server = server_for_config(config_from_dict({"backend": "llamacpp", **data}))
    with pytest.raises(ConfigError, match="^[^\n]*$") as caught:
        server.start()
    assert expected in str(caught.value)
    assert server.process is None  # refused before anything was launched
    assert [r.name for r in registry.list_records()] == before


# -- backend: auto -----------------------------------------------------------------------------


def _machine(monkeypatch, *, vllm: bool, llamacpp: bool, memory_gib: float, gpu: bool = False) -> None:
    """Stand in for another machine's facts (this one has vLLM, llama.cpp and 24 GiB)."""
    monkeypatch.delenv(auto.ENGINE_ENV, raising=False)
    monkeypatch.setattr(auto, "installed", lambda module: vllm if module == "vllm" else llamacpp)
    monkeypatch.setattr(auto, "memory_limit_bytes", lambda: int(memory_gib * 2**30))
    monkeypatch.setattr("mixvllm_nb.gpu.has_gpu", lambda: gpu)


@pytest.mark.parametrize(("machine", "engine", "reason"), [
    ({"vllm": True, "llamacpp": True, "memory_gib": 24}, "vllm", "enough for vLLM's CPU server"),
    ({"vllm": True, "llamacpp": True, "memory_gib": 2}, "llamacpp", "2.0 GiB of memory is too little"),
    ({"vllm": False, "llamacpp": True, "memory_gib": 24}, "llamacpp", "vLLM is not installed"),
    ({"vllm": True, "llamacpp": True, "memory_gib": 2, "gpu": True}, "vllm", "a GPU is present"),
    ({"vllm": True, "llamacpp": False, "memory_gib": 2}, "vllm", "the light engine is not installed"),
    ({"vllm": False, "llamacpp": False, "memory_gib": 24}, "vllm", "neither vLLM nor the light engine"),
])
def test_auto_picks_vllm_where_it_fits_else_llamacpp(monkeypatch, machine, engine, reason):
    _machine(monkeypatch, **machine)
    chosen, why = auto.choose_engine()
    assert chosen == engine and reason in why


def test_auto_on_a_binder_sized_machine_builds_a_llamacpp_server(monkeypatch):
    _machine(monkeypatch, vllm=True, llamacpp=True, memory_gib=1.5)
    server = server_for_config(ServeConfig())
    assert server.config.backend == "llamacpp"
    assert server.get_launch_command()[1:3] == ["-m", "mixvllm_nb.backends.llamacpp_serve"]


def test_the_engine_can_be_forced_and_a_wrong_name_is_one_line(monkeypatch):
    monkeypatch.setenv(auto.ENGINE_ENV, "llamacpp")
    assert auto.choose_engine() == ("llamacpp", "$MIXVLLM_BACKEND is llamacpp")
    monkeypatch.setenv(auto.ENGINE_ENV, "tgi")
    with pytest.raises(ConfigError, match=r"^\$MIXVLLM_BACKEND: 'tgi' is not a backend; allowed: auto, vllm"):
        auto.choose_engine()


def test_this_machines_memory_limit_is_read_from_the_cgroup_or_the_os():
    limit = auto.memory_limit_bytes()
    assert 0 < limit <= psutil.virtual_memory().total
    out = subprocess.run([sys.executable, "-c", "import mixvllm_nb.backends.auto, sys; "
                          "print(any(m in sys.modules for m in ('vllm', 'torch', 'llama_cpp')))"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # choosing an engine imports none of them


def test_a_body_that_is_no_json_object_is_a_one_line_400(light_server):
    import httpx

    url = f"{light_server.base_url}/v1/chat/completions"
    auth = {"Authorization": f"Bearer {light_server.api_key}", "Content-Type": "application/json"}
    for body, expected in ((b"{not json", "request body: invalid JSON"),
                           (b"[1, 2]", "request body: expected a JSON object, got list")):
        response = httpx.post(url, content=body, headers=auth, timeout=30)
        assert response.status_code == 400  # llama_cpp.server alone answers 500 with a traceback
        message = response.json()["error"]["message"]
        assert message.startswith(expected) and "\n" not in message
    assert light_server.check_health()  # and the server is still fine
