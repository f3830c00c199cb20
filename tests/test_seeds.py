"""The seeds' own examples, verbatim (copied into tests/data/seeds/ from shared/seeds/): they must run here.

Where our design differs (a Jupyter terminal instead of seed 001's terminal server), the example still loads
and says in one line what no longer applies.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mixvllm_nb import InferenceServer, create_server, load_server_config
from mixvllm_nb.api import ServeResult
from mixvllm_nb.backends import register_backend
from mixvllm_nb.models import f16_gguf_path
from mixvllm_nb.process import registry

SEEDS = Path(__file__).parent / "data" / "seeds"
VENV_BIN = Path(sys.executable).parent


def test_seed_001s_yaml_loads_and_notes_its_terminal_port():
    config = load_server_config(SEEDS / "seed001_serve.yaml")
    assert config.terminal.enabled and config.terminal.port == 8888
    assert config.inference.tensor_parallel_size == 2 and config.inference.quantization == "awq"
    note = config.terminal.unused_note()
    assert note.startswith("terminal.port 8888: not used") and "Jupyter terminal" in note and "\n" not in note


def test_seed_001s_terminal_flags_are_accepted_by_the_cli():
    out = subprocess.run([str(VENV_BIN / "mixvllm-serve"), "--dry-run", "--backend", "vllm", "--model", "org/m",
                          "--enable-terminal", "--terminal-port", "9000"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "# terminal.port 9000: not used" in out.stdout
    assert "enabled: true" in out.stdout


def test_seed_002s_custom_backend_runs_verbatim():
    namespace = {"InferenceServer": InferenceServer}
    exec((SEEDS / "seed002_custom_backend.txt").read_text(), namespace)  # noqa: S102  the seed's own code
    cls = namespace["MyBackendServer"]
    register_backend(cls)  # named by its get_backend_name(), as the seed's class has no backend_name
    server = create_server("mybackend", model="org/model", port=8300)
    assert type(server) is cls and server.get_backend_name() == "mybackend"
    assert server.get_launch_command() == ["my-backend-binary", "--model", "org/model", "--port", "8300"]
    assert server.get_health_endpoint() == "http://127.0.0.1:8300/health"
    assert server.list_endpoints() == {"health": "http://127.0.0.1:8300/health", "api": "http://127.0.0.1:8300/api"}
    assert server.binary_path == "my-backend-binary" and server.server_url == "http://127.0.0.1:8300"
    assert server.config.backend == "mybackend"


def test_a_launch_message_notes_seed_001s_terminal_address_once():
    server = create_server("vllm", "org/model", port=8301, config=None)
    server.config.terminal.port = 8888
    assert ServeResult(server, "Launched").describe().count("terminal.port 8888: not used") == 1


def test_seed_002s_sglang_example_builds_its_command_with_its_own_server_args():
    # SGLang does not install on this CPU machine: the command is what can be checked here.
    from mixvllm_nb import SGLangServer

    server = SGLangServer(
        model="meta-llama/Llama-2-7b-hf",
        port=8000,
        config={
            'server_args': [
                '--tp', '4',                        # Tensor parallelism size
                '--context-length', '8192',          # Context length
                '--mem-fraction-static', '0.9',     # Memory fraction
            ]
        }
    )
    command = server.get_launch_command()
    assert command[command.index("--mem-fraction-static") + 1] == "0.9" and command.count("--mem-fraction-static") == 1
    assert command[-6:] == ["--tp", "4", "--context-length", "8192", "--mem-fraction-static", "0.9"]


@pytest.mark.vllm  # a real engine: the light one (llama.cpp), which starts in about a second
def test_seed_004s_one_off_generate_starts_answers_and_stops():
    before = {r.name for r in registry.list_records()}
    out = subprocess.run([str(VENV_BIN / "mixvllm-serve"), "generate", "--backend", "llamacpp", "--model-path",
                          str(f16_gguf_path()), "--prompt", "The capital of France is", "--max-tokens", "8",
                          "--temperature", "0"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout
    assert "Launched" in out.stderr and "nothing left, port free" in out.stderr
    assert {r.name for r in registry.list_records()} == before


@pytest.mark.vllm
def test_seed_004s_one_off_generate_uses_a_running_server_of_the_same_config():
    from mixvllm_nb.api import serve, stop_server
    from mixvllm_nb.config import config_from_dict

    running = serve(config_from_dict({"backend": "llamacpp", "model": {"name": str(f16_gguf_path())}})).server
    try:
        out = subprocess.run([str(VENV_BIN / "mixvllm-serve"), "generate", "--backend", "llamacpp", "--model-path",
                              str(f16_gguf_path()), "--prompt", "The capital of France is", "--max-tokens", "8",
                              "--temperature", "0", "--stream"], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert f"Reused {running.name}" in out.stderr and "Paris" in out.stdout
        assert registry.get(running.name).pid == running.pid and running.main_alive()  # left running: not ours
    finally:
        stop_server(running.name)


def test_generation_defaults_reach_sglang_too():
    # SGLang does not install here: its command carries the defaults as its --preferred-sampling-params.
    server = create_server("sglang", "org/model", port=8302, temperature=0.7, max_tokens=512, top_p=0.9, top_k=40)
    command = server.get_launch_command()
    import json

    assert json.loads(command[command.index("--preferred-sampling-params") + 1]) == {
        "temperature": 0.7, "max_new_tokens": 512, "top_p": 0.9, "top_k": 40}
