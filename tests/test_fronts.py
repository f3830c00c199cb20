"""The fronts, fast: magics in-process (IPython's InteractiveShell), the CLI's arguments, one view of a server.

No engine here: argument handling and errors of every magic, the serve flags declared once (the magic
and ``mixvllm-serve`` parse the same ones), and a dead server read the same way by Python, REST,
the magics, the panel and the CLI. The real-kernel, real-vLLM versions live in test_magics.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from test_server_support import StandInProcess, owned_elsewhere

from mixvllm_nb.api import list_servers
from mixvllm_nb.process import registry
from mixvllm_nb.process.ports import free_port

VENV_BIN = Path(sys.executable).parent


def magic(ip, line: str):
    name, _, rest = line.partition(" ")
    return ip.run_line_magic(name, rest)


def one_line_usage_error(ip, line: str) -> str:
    with pytest.raises(UsageError) as info:
        magic(ip, line)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


def test_a_bad_serve_value_is_one_line_and_nothing_starts(ip):
    before = set(os.listdir(registry.servers_dir()))
    message = one_line_usage_error(ip, "vllm_serve --temperature 5 --backend vllm")
    assert "generation_defaults.temperature" in message and "<= 2" in message and "5.0" in message
    message = one_line_usage_error(ip, "vllm_serve --backend tgi")
    assert "backend" in message and "vllm, sglang" in message and "'tgi'" in message
    assert "--env" in one_line_usage_error(ip, "vllm_serve --env NOEQUALS")
    assert "--set" in one_line_usage_error(ip, "vllm_serve --set nothing")
    assert "max_num_seqs" in one_line_usage_error(ip, "vllm_serve --set inference.max_num_seqs=0")
    assert "unrecognized arguments: --no-such-flag" in one_line_usage_error(ip, "vllm_serve --no-such-flag")
    assert set(os.listdir(registry.servers_dir())) == before  # no record, no process


def test_other_magics_answer_bad_input_in_one_line(ip):
    assert "no server named 'nosuch'" in one_line_usage_error(ip, "vllm_stop nosuch")
    assert "no server named 'nosuch'" in one_line_usage_error(ip, "vllm_logs nosuch")
    assert "--levels" in one_line_usage_error(ip, "vllm_bench --levels 1,x")
    assert "every level must be >= 1" in one_line_usage_error(ip, "vllm_bench --levels 0,2")
    assert "is not an http(s) URL" in one_line_usage_error(ip, "vllm_attach ftp://example")
    assert "tensor_parallel_size" in one_line_usage_error(ip, "vllm_plan tests/data/model_configs/llama-3.1-70b.json --gpus 0")
    assert "nothing to complete" in one_line_usage_error(ip, "vllm_generate")


def test_plan_takes_the_config_flags(ip):
    config = Path(__file__).parent / "data" / "model_configs" / "llama-3.1-70b.json"
    one = magic(ip, f"vllm_plan {config} --gpu H100 --dtype bfloat16 --gpus 4 --max-model-len 8192")
    two = magic(ip, f"vllm_plan {config} --gpu H100 --dtype bfloat16 --tensor-parallel-size 4 --max-model-len 8192")
    assert one.tensor_parallel_size == two.tensor_parallel_size == 4
    assert one.kv_cache_tokens == two.kv_cache_tokens and one.kv_cache_tokens > 0
    single = magic(ip, f"vllm_plan {config} --gpu H100 --dtype bfloat16 --max-model-len 8192")
    assert single.fits is False and one.fits is True  # 140 GB of weights fit four H100s, not one


def _option_strings(parser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def test_the_magic_and_the_cli_parse_the_same_serve_flags(ip):
    from mixvllm_nb.cli import _serve_parser

    magic_flags = _option_strings(ip.magics_manager.magics["line"]["vllm_serve"].parser)
    cli_flags = _option_strings(_serve_parser())
    assert magic_flags - {"--no-wait"} == cli_flags - {"--dry-run", "-h", "--help"}
    # seed 003's names, seed 004's aliases and the flags of the config's fields, all from one declaration
    assert {"--gpus", "--gpu-memory", "--model-path", "--tensor-parallel-size", "--gpu-memory-utilization",
            "--set", "--env", "--log-dir", "--replace"} <= cli_flags
    doc = ip.magics_manager.magics["line"]["vllm_serve"].__doc__
    help_text = subprocess.run([str(VENV_BIN / "mixvllm-serve"), "--help"], capture_output=True, text=True).stdout
    for phrase in ("fraction of each GPU's memory vLLM may use", "KV cache size on CPU in whole GiB"):
        assert phrase in doc and phrase in " ".join(help_text.split())


def test_an_option_flag_reaches_the_config(ip, tmp_path):
    from mixvllm_nb.cli import main

    # --dry-run prints the final config: every declared flag lands at its path.
    out = subprocess.run(
        [str(VENV_BIN / "mixvllm-serve"), "--dry-run", "--backend", "vllm", "--model", "org/model", "--pp", "2",
         "--gpu-memory-utilization", "0.5", "--top-k", "7", "--set", "inference.max_num_seqs=3"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "pipeline_parallel_size: 2" in out.stdout and "gpu_memory_utilization: 0.5" in out.stdout
    assert "top_k: 7" in out.stdout and "max_num_seqs: 3" in out.stdout
    assert main(["--dry-run", "--temperature", "9"]) == 1


def _ghost(name: str) -> None:
    """A record whose process is gone, last written as 'ready' by an owner that never saw it die."""
    registry.save(registry.ServerRecord(
        name=name, backend="vllm", model="m", served_model_name="m", host="127.0.0.1", port=9,
        base_url="http://127.0.0.1:9", pid=2**22 - 11, create_time=1.0, state="ready",
    ))


def _cli_state(name: str) -> str:
    out = subprocess.run([str(VENV_BIN / "mixvllm-serve"), "list"], capture_output=True, text=True, timeout=120)
    row = next(line for line in out.stdout.splitlines() if line.startswith(name + " "))
    return row.split()[2]


async def _rest_state(jp_fetch, name: str) -> str:
    response = await jp_fetch("mixvllm", "api", "servers", name)
    return json.loads(response.body)["state"]


def _panel_state(name: str) -> str:
    from mixvllm_nb.panel import ControlPanel
    from mixvllm_nb.panel.monitor import server_state

    panel = ControlPanel(name, interval=60)
    try:
        state = server_state(panel.server)
        assert state in panel.state.value  # the badge in the panel's header says the same
        return state
    finally:
        panel.close()


def _magic_state(ip, name: str) -> str:
    table = magic(ip, "vllm_list")
    row = next(r for r in table.rows if r[0] == name)
    return row[2].split(">")[1].split("<")[0]  # the state badge's text


async def test_a_dead_server_reads_the_same_state_in_every_front(ip, jp_fetch):
    _ghost("ghost-front")
    # A server of ours, killed: its heartbeat writes "crashed"; every front must then agree.
    server = StandInProcess("standin-model", name="killed-front", port=free_port(), heartbeat_interval=0.2,
                            detach=True).start()
    try:
        os.kill(server.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while registry.get("killed-front").state != "crashed":
            assert time.monotonic() < deadline, "the heartbeat never noticed the kill"
            time.sleep(0.1)
        for name, expected in (("ghost-front", "exited"), ("killed-front", "crashed")):
            python = next(v["state"] for v in list_servers() if v["name"] == name)
            states = {"python": python, "rest": await _rest_state(jp_fetch, name), "magic": _magic_state(ip, name),
                      "panel": _panel_state(name), "cli": _cli_state(name)}
            assert set(states.values()) == {expected}, states
    finally:
        server.stop()
        registry.remove("ghost-front")


def test_mixvllm_serve_reuses_a_running_server_with_the_same_config(tmp_path):
    from mixvllm_nb.api import server_for_config
    from mixvllm_nb.config import load_server_config
    from mixvllm_nb.process.tree import start_stamp

    model = tmp_path / "model"
    model.mkdir()
    overrides = {"backend": "vllm", "model.name": str(model), "generation_defaults.temperature": 0.0}
    handle = server_for_config(load_server_config(None, overrides))
    handle.prepare()
    stand_in = subprocess.Popen(["sleep", "60"])  # the "server": a live process the record names
    registry.save(registry.ServerRecord(
        name="already-running", backend="vllm", model=str(model), served_model_name=str(model), host="127.0.0.1",
        port=9, base_url="http://127.0.0.1:9", pid=stand_in.pid, create_time=start_stamp(stand_in.pid),
        state="ready", identity=handle.config.identity(), config=handle.config.public_dict(),
    ))
    try:
        out = subprocess.run([str(VENV_BIN / "mixvllm-serve"), "--backend", "vllm", "--model", str(model),
                              "--temperature", "0"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "Reused already-running" in out.stdout and "no second model load" in out.stdout
        assert {r.name for r in registry.list_records()} >= {"already-running"}
        assert not [r for r in registry.list_records() if r.name != "already-running" and r.model == str(model)]
    finally:
        registry.remove("already-running")
        stand_in.kill()
        stand_in.wait()


def test_a_server_whose_backend_only_its_owner_knows_is_stopped_by_another_process():
    # The stand-in backend is registered in this process only: the CLI has never heard of it.
    server = StandInProcess("standin-model", name="foreign-backend", port=free_port(), detach=True).start()
    pid = server.pid
    try:
        out = subprocess.run([str(VENV_BIN / "mixvllm-serve"), "stop", "foreign-backend"], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "nothing left, port free" in out.stdout
        assert registry.get("foreign-backend", missing_ok=True) is None
        server.process.wait(timeout=10)  # our child: reaped here, so it cannot linger as a zombie
        assert server.process.returncode is not None
    finally:
        if server.process.poll() is None:
            server.stop()
    assert not any(p.pid == pid for p in __import__("psutil").process_iter())


def test_the_same_config_asked_twice_at_once_loads_one_engine():
    import threading

    from mixvllm_nb.api import serve
    from mixvllm_nb.config import config_from_dict

    config = config_from_dict({"backend": "standin-proc", "model": {"name": "standin-model"}, "env_vars": {"RACE": "1"}})
    barrier, results = threading.Barrier(3), []

    def ask() -> None:
        barrier.wait()
        results.append(serve(config, wait=False))

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert sorted(r.outcome for r in results) == ["Launched", "Reused", "Reused"]
        assert len({r.server.name for r in results}) == 1
    finally:
        for result in results:
            if result.outcome == "Launched":
                result.server.stop()


def test_a_second_copy_that_differs_only_in_sampling_says_why_it_loads_and_how_to_avoid_it():
    from mixvllm_nb.api import serve
    from mixvllm_nb.config import config_from_dict

    base = {"backend": "standin-proc", "model": {"name": "standin-model"}, "env_vars": {"TWIN": "1"}}
    first = serve(config_from_dict({**base, "generation_defaults": {"temperature": 1.0}}), wait=False)
    other = None
    try:
        assert "second copy" not in first.describe()
        other = serve(config_from_dict({**base, "generation_defaults": {"temperature": 0.0, "max_tokens": 64}}),
                      wait=False)
        said = other.describe()
        assert other.outcome == "Launched" and other.server.name != first.server.name
        assert f"second copy of standin-model: {first.server.name} runs the same engine" in said, said
        assert "temperature 1.0 there, 0.0 here" in said and "max_tokens unset there, 64 here" in said
        assert f"%vllm_stop {first.server.name}" in said
        unrelated = serve(config_from_dict({**base, "env_vars": {"TWIN": "2"}}), wait=False)  # another engine
        try:
            assert "second copy" not in unrelated.describe()
        finally:
            unrelated.server.stop()
    finally:
        for result in (first, other):
            if result is not None:
                result.server.stop()


def test_a_server_bound_beyond_loopback_says_what_it_exposes():
    from mixvllm_nb.api import ServeResult

    server = StandInProcess("standin-model", name="exposed", host="0.0.0.0", port=free_port())
    assert "every machine that reaches this one" in ServeResult(server, "Launched").describe()
    server = StandInProcess("standin-model", name="private", port=free_port())
    assert "every machine" not in ServeResult(server, "Launched").describe()


def test_quantization_choices_are_the_installed_vllms_and_null_means_none():
    import importlib.util

    from mixvllm_nb.config import config_from_dict
    from mixvllm_nb.config.schema import quantization_methods
    from mixvllm_nb.errors import ConfigError

    assert config_from_dict({"inference": {"quantization": "null"}}).inference.quantization is None
    if importlib.util.find_spec("vllm") is not None:  # vLLM 0.32 knows gptq_marlin and dropped squeezellm
        assert "gptq_marlin" in quantization_methods() and "squeezellm" not in quantization_methods()
        assert config_from_dict({"inference": {"quantization": "gptq_marlin"}}).inference.quantization == "gptq_marlin"
        with pytest.raises(ConfigError, match="inference.quantization: allowed: 'awq'"):
            config_from_dict({"inference": {"quantization": "squeezellm"}})
    else:
        assert quantization_methods() == ("awq", "gptq", "fp8", "squeezellm")
    out = subprocess.run([str(VENV_BIN / "mixvllm-serve"), "--dry-run", "--backend", "vllm", "--model", "org/m",
                          "--quantization", "null"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "quantization: null" in out.stdout and "--quantization" not in out.stdout.split("# launch command")[1]


def test_import_and_load_ext_import_no_heavy_module():
    code = ("import sys, mixvllm_nb\n"
            "from IPython.testing.globalipapp import start_ipython\n"
            "start_ipython().run_line_magic('load_ext', 'mixvllm_nb')\n"
            "print(sorted(m for m in ('torch', 'vllm', 'transformers', 'openai', 'pydantic', 'mcp')\n"
            "             if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"  # pydantic too: magic arguments are built on first use


def test_every_option_help_renders_in_the_magics_and_the_cli_help(ip):
    """An option's description may name a magic ("%vllm_sleep"): argparse's %-formatting must not choke on it."""
    from mixvllm_nb.config.options import OPTIONS

    assert any("%" in option.help for option in OPTIONS)  # the case this test guards
    help_text = ip.find_line_magic("vllm_serve").parser.format_help()
    assert "%vllm_sleep" in help_text
    cli = subprocess.run([str(VENV_BIN / "mixvllm-serve"), "--help"], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and "%vllm_sleep" in cli.stdout, cli.stderr[-500:]


def test_a_generated_api_key_reads_as_a_flag_value(ip):
    """``--api-key KEY`` with a key made for us parses whatever the key is (a url-safe token began with
    ``-`` one time in 64, and ``%vllm_attach URL --api-key -...`` then failed: seen in CI on notebook 08)."""
    from mixvllm_nb.config.schema import new_api_key
    from mixvllm_nb.magics.common import parse

    attach = ip.find_line_magic("vllm_attach")  # the bound magic: parse builds its parser
    keys = {new_api_key() for _ in range(500)}
    assert len(keys) == 500 and min(len(k) for k in keys) >= 32  # random, and long enough to guess at no rate
    for key in keys:
        assert parse(attach, f"http://127.0.0.1:1 --api-key {key}").api_key == key



def test_a_server_another_live_process_owns_is_stopped_only_with_force(ip, capsys):
    with owned_elsewhere("owned-elsewhere") as (owner, pid):
        cli = subprocess.run([str(VENV_BIN / "mixvllm-serve"), "stop", "owned-elsewhere"], capture_output=True,
                             text=True, timeout=60)
        assert cli.returncode == 1 and f"belongs to a Python process (pid {owner.pid})" in cli.stderr, cli.stderr
        assert "--force" in cli.stderr and "\n" not in cli.stderr.strip()
        ip.run_line_magic("vllm_stop", "owned-elsewhere")  # the notebook is done with it; its owner is not
        assert "left running" in capsys.readouterr().out
        assert registry.get("owned-elsewhere").pid == pid and __import__("psutil").pid_exists(pid)
        ip.run_line_magic("vllm_stop", "owned-elsewhere --force")
        assert "nothing left, port free" in capsys.readouterr().out
        assert registry.get("owned-elsewhere", missing_ok=True) is None
    assert registry.get("owned-elsewhere", missing_ok=True) is None
