"""Config validation, the three YAML schemas, CLI > YAML > defaults, and launch commands.

No server runs here: these check what would be launched (``get_launch_command``).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from device_expectations import on_gpu

from mixvllm_nb import VLLMServer, create_server
from mixvllm_nb.backends.args import format_extra_args
from mixvllm_nb.config import ServeConfig, config_from_dict, load_server_config
from mixvllm_nb.errors import ConfigError

MODEL = "meta-llama/Llama-2-7b-hf"


def write(tmp_path, text: str, name: str = "c.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize(
    ("data", "path", "allowed"),
    [
        ({"inference": {"gpu_memory_utilization": 0}}, "inference.gpu_memory_utilization", "> 0"),
        ({"inference": {"gpu_memory_utilization": 1.5}}, "inference.gpu_memory_utilization", "<= 1"),
        ({"server": {"port": 80}}, "server.port", ">= 1024"),
        ({"server": {"port": 70000}}, "server.port", "<= 65535"),
        ({"generation_defaults": {"temperature": 2.5}}, "generation_defaults.temperature", "<= 2"),
        ({"generation_defaults": {"temperature": -1}}, "generation_defaults.temperature", ">= 0"),
        ({"generation_defaults": {"top_p": 0}}, "generation_defaults.top_p", "> 0"),
        ({"generation_defaults": {"top_p": 1.1}}, "generation_defaults.top_p", "<= 1"),
        ({"generation_defaults": {"top_k": 0}}, "generation_defaults.top_k", "-1"),
        ({"generation_defaults": {"presence_penalty": 3}}, "generation_defaults.presence_penalty", "<= 2"),
        ({"generation_defaults": {"frequency_penalty": -2.5}}, "generation_defaults.frequency_penalty", ">= -2"),
        ({"generation_defaults": {"max_tokens": 0}}, "generation_defaults.max_tokens", ">= 1"),
        ({"inference": {"tensor_parallel_size": 0}}, "inference.tensor_parallel_size", ">= 1"),
        ({"inference": {"max_model_len": -5}}, "inference.max_model_len", ">= 1"),
        ({"inference": {"max_num_seqs": 0}}, "inference.max_num_seqs", ">= 1"),
        ({"inference": {"cpu_kv_cache_gib": 0}}, "inference.cpu_kv_cache_gib", ">= 1"),
        ({"inference": {"quantization": "int3"}}, "inference.quantization", "'awq'"),
        ({"inference": {"dtype": "float8"}}, "inference.dtype", "'bfloat16'"),
        ({"inference": {"distributed_executor_backend": "slurm"}}, "inference.distributed_executor_backend", "'ray'"),
        ({"profile": {"tool": "perf"}}, "profile.tool", "'nsys'"),
        ({"server": {"name": "bad name!"}}, "server.name", "pattern"),
        ({"startup_timeout": 0}, "startup_timeout", "> 0"),
    ],
)
def test_every_validation_rule_names_path_value_and_rule(data, path, allowed):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    message = str(info.value)
    assert "\n" not in message
    assert path in message
    assert allowed in message
    bad = next(iter(next(iter(data.values())).values())) if isinstance(next(iter(data.values())), dict) else next(iter(data.values()))
    assert repr(bad) in message


def test_an_unknown_backend_is_one_line_naming_the_allowed_ones():
    # Checked where the backend is looked up (config knows no backend classes: no import cycle).
    config = config_from_dict({"backend": "tgi"})
    with pytest.raises(ConfigError) as info:
        create_server(config.backend)
    message = str(info.value)
    assert "\n" not in message and "backend" in message and "vllm, sglang" in message and "'tgi'" in message


def test_unknown_keys_are_rejected_with_the_allowed_ones():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"inference": {"gpu_mem": 0.5}})
    assert "inference.gpu_mem: unknown key; allowed:" in str(info.value)
    assert "gpu_memory_utilization" in str(info.value)
    with pytest.raises(ConfigError, match="colour: unknown key"):
        config_from_dict({"colour": "blue"})


def test_defaults_are_loopback_free_port_random_key():
    config = ServeConfig()
    assert config.server.host == "127.0.0.1"
    assert config.server.port is None and config.server.api_key is None
    a, b = VLLMServer(MODEL), VLLMServer(MODEL)
    a.prepare(), b.prepare()
    assert a.api_key and a.api_key != b.api_key
    assert 1024 <= a.port <= 65535


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "model:\n  name: x\n inference: [\n")
    with pytest.raises(ConfigError) as info:
        load_server_config(path)
    assert str(path) in str(info.value) and "line 3" in str(info.value)


def test_missing_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_server_config(tmp_path / "nope.yaml")


SEED_001 = """
model:
  name: meta-llama/Llama-2-7b-hf
  trust_remote_code: true
inference:
  tensor_parallel_size: 2
  gpu_memory_utilization: 0.8
  max_model_len: 4096
  dtype: bfloat16
server:
  port: 8011
generation_defaults:
  temperature: 0.7
  max_tokens: 512
  top_k: 40
"""
SEED_003 = """
model:
  name: meta-llama/Llama-2-7b-hf
  trust_remote_code: true
inference:
  gpus: 2
  gpu_memory: 0.8
  max_model_len: 4096
  dtype: bfloat16
server:
  port: 8011
generation:
  temperature: 0.7
  max_tokens: 512
  top_k: 40
"""
SEED_002 = """
backend: vllm
model: meta-llama/Llama-2-7b-hf
port: 8011
inference:
  dtype: bfloat16
config:
  api_server_args:
    tensor-parallel-size: "2"
    gpu-memory-utilization: 0.8
    max-model-len: 4096
    trust-remote-code: true
generation_defaults:
  temperature: 0.7
  max_tokens: 512
  top_k: 40
"""


def _command(path, **kw):
    server = VLLMServer(config=load_server_config(path), **kw)
    server.config.server.api_key = None
    return server.get_launch_command()


def test_seed_001_and_003_schemas_give_the_same_command(tmp_path, monkeypatch):
    monkeypatch.setattr(VLLMServer, "on_cpu", lambda self: False)  # GPU branch: mocked, no GPU here
    one = _command(write(tmp_path, SEED_001, "one.yaml"))
    three = _command(write(tmp_path, SEED_003, "three.yaml"))
    assert one == three
    assert one[one.index("--tensor-parallel-size") + 1] == "2"
    assert one[one.index("--gpu-memory-utilization") + 1] == "0.8"
    gen = json.loads(one[one.index("--override-generation-config") + 1])
    assert gen == {"temperature": 0.7, "max_new_tokens": 512, "top_k": 40}


def test_seed_002_flat_schema_gives_the_same_flags(tmp_path, monkeypatch):
    monkeypatch.setattr(VLLMServer, "on_cpu", lambda self: False)
    one = _command(write(tmp_path, SEED_001, "one.yaml"))
    two = _command(write(tmp_path, SEED_002, "two.yaml"))

    def pairs(cmd):
        out, i = {}, 0
        while i < len(cmd):
            if cmd[i].startswith("--"):
                has_value = i + 1 < len(cmd) and not cmd[i + 1].startswith("--")
                out[cmd[i]] = cmd[i + 1] if has_value else True
                i += 2 if has_value else 1
            else:
                i += 1
        return out

    # seed 002 passes tp, memory and length as raw api_server_args: vLLM gets the same flags
    assert pairs(one) == pairs(two)


def test_cli_overrides_yaml_overrides_defaults(tmp_path):
    path = write(tmp_path, SEED_003)
    config = load_server_config(path, {"server.port": 9000, "generation_defaults.temperature": 0.9, "model.name": None})
    assert config.server.port == 9000  # CLI
    assert config.generation_defaults.temperature == 0.9  # CLI
    assert config.model.name == MODEL  # YAML (None = flag not given)
    assert config.inference.max_model_len == 4096  # YAML
    assert config.server.host == "127.0.0.1"  # default


def test_two_spellings_of_one_setting_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="inference.gpus and inference.tensor_parallel_size"):
        config_from_dict({"inference": {"gpus": 2, "tensor_parallel_size": 2}})
    with pytest.raises(ConfigError, match="generation and generation_defaults"):
        config_from_dict({"generation": {}, "generation_defaults": {}})


def test_extra_args_list_and_dict_formats():
    assert format_extra_args(["--enforce-eager", "--max-num-seqs", "8"]) == [
        "--enforce-eager",
        "--max-num-seqs",
        "8",
    ]
    got = format_extra_args(
        {
            "tensor-parallel-size": 4,
            "--gpu-memory-utilization": 0.9,
            "trust_remote_code": True,
            "disable-log-requests": False,
            "kv-cache-dtype": {"auto": "fp8"},
        }
    )
    assert got == [
        "--tensor-parallel-size",
        "4",
        "--gpu-memory-utilization",
        "0.9",
        "--trust-remote-code",
        "--kv-cache-dtype",
        '{"auto": "fp8"}',
    ]


def test_extra_args_reach_the_launch_command_in_both_formats():
    as_list = VLLMServer(MODEL, extra_args=["--max-num-batched-tokens", "512", "--disable-log-stats"])
    as_dict = VLLMServer(MODEL, config={"api_server_args": {"max_num_batched_tokens": 512, "disable_log_stats": True}})
    assert as_list.get_launch_command()[-3:] == as_dict.get_launch_command()[-3:]


def test_extra_args_that_clash_with_config_fields_are_refused():
    server = VLLMServer(MODEL, extra_args={"port": 9999})
    with pytest.raises(ConfigError, match="--port is already set"):
        server.get_launch_command()


def test_cpu_defaults_and_secret_kept_off_the_command_line(monkeypatch):
    monkeypatch.setattr(VLLMServer, "on_cpu", lambda self: True)  # the CPU branch, on a GPU machine too
    server = VLLMServer(MODEL, cpu_kv_cache_gib=2, api_key="s3cret-key")
    command = server.get_launch_command()
    env = server.get_launch_env()
    assert "--enforce-eager" in command and command[command.index("--dtype") + 1] == "float32"
    assert "--gpu-memory-utilization" not in command
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert env["VLLM_API_KEY"] == "s3cret-key"
    assert not any("s3cret" in part for part in command)
    assert "s3cret" not in repr(server.config) and "s3cret" not in json.dumps(server.config.public_dict())


def test_the_default_command_follows_this_machines_device():
    """No GPU: vLLM's CPU build gets float32, eager mode and a CPU KV cache; a GPU: none of them."""
    server = VLLMServer(MODEL)
    command, env = server.get_launch_command(), server.get_launch_env()
    cpu_defaults = ["--dtype" in command and command[command.index("--dtype") + 1] == "float32",
                    "--enforce-eager" in command, "VLLM_CPU_KVCACHE_SPACE" in env]
    if on_gpu():
        assert not server.on_cpu() and not any(cpu_defaults), command
    else:
        assert server.on_cpu() and all(cpu_defaults), command


def test_nonexistent_local_model_is_refused_before_launch(tmp_path):
    server = VLLMServer(str(tmp_path / "no-such-model"))
    with pytest.raises(ConfigError, match="is not an existing folder"):
        server.prepare()


def test_sglang_command(tmp_path):
    # SGLang cannot run here (no GPU, no sglang install): only its command is checked.
    server = create_server("sglang", MODEL, port=8100, gpus=4, max_model_len=8192, gpu_memory=0.85)
    command = server.get_launch_command()
    assert command[1:3] == ["-m", "sglang.launch_server"]
    assert command[command.index("--model-path") + 1] == MODEL
    assert command[command.index("--tp") + 1] == "4"
    assert command[command.index("--context-length") + 1] == "8192"
    assert command[command.index("--mem-fraction-static") + 1] == "0.85"
    assert "--api-key" not in command


def test_sglang_takes_a_chat_template_and_refuses_vllms_tool_parsers_in_one_line(tmp_path):
    template = tmp_path / "tools.jinja"
    template.write_text("{{ messages }}")
    command = create_server("sglang", MODEL, tools={"chat_template": str(template)}).get_launch_command()
    assert command[command.index("--chat-template") + 1] == str(template)
    for tools in ({"enable_auto_tool_choice": True}, {"tool_call_parser": "hermes"}):
        with pytest.raises(ConfigError) as refused:
            create_server("sglang", MODEL, tools=tools).get_launch_command()
        field = next(iter(tools))
        assert str(refused.value).startswith(f"tools.{field}: tool calling is not on this engine (sglang)")
        assert "--tool-call-parser NAME can go in extra_args" in str(refused.value)


def test_profile_wrappers_and_pytorch_env(tmp_path):
    nsys = VLLMServer(MODEL, profile={"enabled": True, "tool": "nsys", "output_dir": str(tmp_path), "args": ["--trace=cuda,nvtx"]})
    command = nsys.get_launch_command()
    assert command[:2] == ["nsys", "profile"] and "--trace=cuda,nvtx" in command
    assert command[command.index("-m") + 1] == "vllm.entrypoints.openai.api_server"
    amd = VLLMServer(MODEL, profile={"enabled": True, "tool": "amd", "output_dir": str(tmp_path), "args": ["--stats"]})
    assert amd.get_launch_command()[0] == "rocprof" and "--stats" in amd.get_launch_command()
    torch_prof = VLLMServer(MODEL, profile={"enabled": True, "tool": "pytorch", "output_dir": str(tmp_path)})
    command = torch_prof.get_launch_command()
    assert json.loads(command[command.index("--profiler-config") + 1]) == {
        "profiler": "torch", "torch_profiler_dir": str(tmp_path.resolve())}
    sglang = create_server("sglang", MODEL, profile={"enabled": True, "tool": "pytorch", "output_dir": str(tmp_path)})
    assert sglang.get_launch_env()["SGLANG_TORCH_PROFILER_DIR"] == str(tmp_path.resolve())
    assert torch_prof.get_launch_command()[0].endswith("python") or "python" in torch_prof.get_launch_command()[0]


def test_custom_backend_subclass():
    from mixvllm_nb import InferenceServer, register_backend

    @register_backend
    class EchoServer(InferenceServer):
        backend_name = "echo-test"

        def build_command(self):
            return ["echo-server", "--model", self.model, "--port", str(self.port)]

    server = create_server("echo-test", "some/model", port=8200)
    assert server.get_launch_command() == ["echo-server", "--model", "some/model", "--port", "8200"]
    assert server.get_health_endpoint() == "http://127.0.0.1:8200/health"
    assert config_from_dict({"backend": "echo-test"}).backend == "echo-test"


def test_identity_ignores_name_port_key_but_not_model_settings():
    a = config_from_dict({"server": {"name": "a", "port": 9001, "api_key": "x"}})
    b = config_from_dict({"server": {"name": "b"}})
    c = config_from_dict({"inference": {"max_model_len": 1024}})
    assert a.identity() == b.identity() != c.identity()


def test_env_assignments():
    from mixvllm_nb.config import parse_env_assignments

    assert parse_env_assignments(["A=1", "B_2=x=y"]) == {"A": "1", "B_2": "x=y"}
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_env_assignments(["novalue"])


def test_seed_004_load_request_gives_the_same_command_as_seed_001(tmp_path, monkeypatch):
    monkeypatch.setattr(VLLMServer, "on_cpu", lambda self: False)  # GPU branch: mocked, no GPU here
    body = {"model_path": MODEL, "trust_remote_code": True, "tensor_parallel_size": 2,
            "gpu_memory_utilization": 0.8, "max_model_len": 4096, "dtype": "bfloat16", "port": 8011,
            "generation_defaults": {"temperature": 0.7, "max_tokens": 512, "top_k": 40}}
    server = VLLMServer(config=config_from_dict(body))
    server.config.server.api_key = None
    assert server.get_launch_command() == _command(write(tmp_path, SEED_001, "one.yaml"))
    with pytest.raises(ConfigError, match="model_path and model.name are the same setting"):
        config_from_dict({"model_path": MODEL, "model": {"name": MODEL}})


# configs/mcp_servers.yaml lists MCP servers for the chat, not a server to launch (tests/test_mcp.py reads it).
EXAMPLES = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")
                  if p.name != "mcp_servers.yaml")


def test_the_example_configs_are_all_there():
    # The test below is parametrised over the folder: without this one, a lost file would only lose its case.
    assert [p.name for p in EXAMPLES] == ["gpt-oss-20b.yaml", "light-llamacpp.yaml", "llama-70b-tp2.yaml",
                                          "phi3-mini.yaml", "qwen2.5-vl-3b.yaml", "seed002-flat.yaml",
                                          "smollm2-cpu.yaml"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_config_validates_and_dry_runs(path, capsys):
    from mixvllm_nb.cli import main

    assert main(["--dry-run", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    command = out.split("# launch command\n")[1]
    config = load_server_config(path)
    assert config.model.name is None or config.model.name in command
    assert ("llamacpp_serve" in command) == (config.backend == "llamacpp")


def test_a_layout_needing_more_gpus_than_present_is_refused_before_launch(monkeypatch):
    from mixvllm_nb.gpu import GPUInfo

    # GPU branch: one H100 stood in for (no GPU here); the check itself is the real code.
    monkeypatch.setattr("mixvllm_nb.gpu.detect_gpus", lambda **_: [GPUInfo(0, "NVIDIA H100 80GB HBM3", 80 * 2**30)])
    server = VLLMServer(MODEL, tensor_parallel_size=2, pipeline_parallel_size=2)
    with pytest.raises(ConfigError, match=r"^inference: tensor_parallel_size 2 x pipeline_parallel_size 2 x "
                                          r"data_parallel_size 1 needs 4 GPUs; this machine has 1 \(NVIDIA H100"):
        server.start()
    assert server.process is None
    VLLMServer(MODEL, tensor_parallel_size=2, distributed_executor_backend="ray").check_resources()  # multi-node
    monkeypatch.setattr("mixvllm_nb.gpu.detect_gpus", lambda **_: [])
    VLLMServer(MODEL, tensor_parallel_size=2).check_resources()  # CPU: vLLM's CPU build splits across cores
