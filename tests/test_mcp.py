"""MCP tools in the chat: the config file, a real MCP server over stdio and HTTP, the tool loop, and the fronts.

The MCP server is real (tests/data/mcp/tools_server.py, the SDK's MCPServer) and logs each call it receives to a
file. The fast tests run without an engine; the ones marked ``vllm`` start their own vLLM CPU server with tool
calling on (the session's shared server has it off) and let the embedded model call a tool.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import yaml

from mixvllm_nb.client import Conversation
from mixvllm_nb.errors import ConfigError, MixVLLMError
from mixvllm_nb.mcp_tools import load_mcp_config, parse_mcp_config
from mixvllm_nb.mcp_tools.chat import tool_chat_turn
from mixvllm_nb.mcp_tools.toolbox import MCPServerError, Toolbox

SERVER = Path(__file__).parent / "data" / "mcp" / "tools_server.py"
WEATHER_FACT = "sunny, 21 C, wind 7 km/h (station ref ZX-41)"  # what tools_server.get_weather answers
ROOT = Path(__file__).resolve().parents[1]


def calls_of(log: Path) -> list[dict]:
    """Return what the MCP server logged: its start line (with its pid), then every call it received."""
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def server_entry(log: Path, **extra) -> dict:
    return {"command": "python", "args": [str(SERVER)], "env": {"MCP_CALL_LOG": str(log)}, **extra}


def gone(pid: int, timeout: float = 15.0) -> bool:
    """Return True once ``pid`` has exited (a zombie counts as exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


# --- the config file --------------------------------------------------------------------------------------------

def test_seed_003_yaml_and_the_common_json_give_the_same_servers(tmp_path):
    seed = tmp_path / "mcp_servers.yaml"
    seed.write_text("""
mcp_servers:
  weather:
    command: python
    args: [server.py, 3]
    env: {DEBUG: true}
    cwd: tools
    timeout: 5
  remote:
    url: http://127.0.0.1:9/mcp
    headers: {Authorization: Bearer x}
  off:
    command: nothing
    disabled: true
""")
    common = tmp_path / "claude.json"
    common.write_text(json.dumps({"mcpServers": {
        "weather": {"command": "python", "args": ["server.py", "3"], "env": {"DEBUG": "1"}, "cwd": "tools",
                    "timeout": 5},
        "remote": {"type": "http", "url": "http://127.0.0.1:9/mcp", "headers": {"Authorization": "Bearer x"}}}}))
    from_yaml, from_json = load_mcp_config(seed), load_mcp_config(common)
    assert from_yaml == from_json
    weather, remote = from_yaml
    assert (weather.name, weather.command, weather.args) == ("weather", sys.executable, ("server.py", "3"))
    assert weather.env == {"DEBUG": "1"} and weather.timeout == 5.0 and weather.transport == "stdio"
    assert weather.cwd == str(tmp_path / "tools")  # relative to the config file, not to where the chat runs
    assert (remote.url, remote.headers, remote.transport) == ("http://127.0.0.1:9/mcp",
                                                              {"Authorization": "Bearer x"}, "http")
    assert [s.name for s in from_yaml] == ["weather", "remote"]  # the disabled one is left out


def test_the_example_config_lists_the_packaged_demo_server():
    (demo,) = load_mcp_config(ROOT / "configs" / "mcp_servers.yaml")
    assert demo.command == sys.executable and demo.args == ("-m", "mixvllm_nb.mcp_tools.demo_server")


@pytest.mark.parametrize("data, message", [
    ({"mcp_servers": {"weather": {"args": ["x"]}}},
     "mcp_servers.weather.command: missing; give command (stdio) or url (HTTP)"),
    ({"mcpServers": {"weather": {"comand": "python"}}}, "mcpServers.weather.comand: unknown key; allowed: args,"),
    ({"mcp_servers": {"weather": {"command": "python", "url": "http://x/mcp"}}},
     "mcp_servers.weather: both command and url"),
    ({"mcp_servers": {"weather": {"url": "ftp://x"}}}, "mcp_servers.weather.url: 'ftp://x' is not an http(s) URL"),
    ({"mcp_servers": {"weather": {"command": "python", "args": "server.py"}}},
     "mcp_servers.weather.args: must be a list of strings"),
    ({"mcp_servers": {"weather": {"command": "python", "timeout": 0}}},
     "mcp_servers.weather.timeout: 0 is not a number of seconds above 0"),
    ({"mcp_servers": {"weather": {"type": "sse", "url": "http://x/sse"}}},
     "mcp_servers.weather.type: 'sse' is not supported; allowed: stdio, http"),
    ({"mcp_servers": {"weather": {"url": "http://x/mcp", "env": {"A": "1"}}}},
     "mcp_servers.weather.env: only for stdio servers"),
    ({"mcp_servers": {"bad name": {"command": "python"}}}, "mcp_servers.bad name: a server name is letters"),
    ({"servers_list": {}}, "mcp config: expected mcp_servers:"),
    ({"mcp_servers": {}}, "mcp_servers: no server listed"),
])
def test_a_bad_config_is_one_line_naming_the_server_and_the_field(data, message):
    with pytest.raises(ConfigError) as caught:
        parse_mcp_config(data)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_a_file_that_is_missing_or_not_parseable_is_one_line(tmp_path):
    broken_json, broken_yaml = tmp_path / "servers.json", tmp_path / "servers.yaml"
    broken_json.write_text('{"mcpServers": {"a": }')
    broken_yaml.write_text("mcp_servers:\n  a: [unclosed\n")
    for path, expected in ((tmp_path / "nothing.yaml", "No such file"), (broken_json, "not JSON (line 1"),
                           (broken_yaml, "not YAML (line")):
        with pytest.raises(ConfigError) as caught:
            load_mcp_config(path)
        assert expected in str(caught.value) and str(path) in str(caught.value) and "\n" not in str(caught.value)


# --- a real MCP server over stdio ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toolbox(tmp_path_factory):
    log = tmp_path_factory.mktemp("mcp") / "calls.jsonl"
    box = Toolbox(parse_mcp_config({"mcp_servers": {"tools": server_entry(log, timeout=2)}})).start()
    box.log = log
    yield box
    box.close()


def test_the_servers_tools_are_offered_as_openai_tools(toolbox):
    by_name = {t["function"]["name"]: t for t in toolbox.openai_tools()}
    assert sorted(by_name) == ["add", "explode", "get_weather", "slow"]
    weather = by_name["get_weather"]
    assert weather["type"] == "function"
    assert weather["function"]["strict"] is True  # vLLM then decodes the arguments under the schema
    assert weather["function"]["description"] == "Return today's weather in a city."
    params = weather["function"]["parameters"]
    assert params["type"] == "object" and params["required"] == ["city"]
    assert params["properties"]["city"]["type"] == "string"
    assert by_name["add"]["function"]["parameters"]["properties"]["a"]["type"] == "integer"


def test_a_call_reaches_the_server_and_its_result_comes_back(toolbox):
    outcome = toolbox.call("get_weather", '{"city": "Paris"}')
    assert outcome.kind == "result" and outcome.text == f"Weather in Paris: {WEATHER_FACT}"
    assert outcome.line() == f"[tool result] get_weather: Weather in Paris: {WEATHER_FACT}"
    assert toolbox.call("add", {"a": 2, "b": 40}).text == "42"
    received = [c for c in calls_of(toolbox.log) if c["tool"] != "(started)"]
    assert {"tool": "get_weather", "arguments": {"city": "Paris"}} in [
        {k: c[k] for k in ("tool", "arguments")} for c in received]


@pytest.mark.parametrize("name, arguments, expected", [
    ("get_weather", '"Paris"', 'get_weather: arguments must be a JSON object such as {"city": ...}, '
                               'not the string "Paris"'),
    ("get_weather", "Paris", "get_weather: arguments are not JSON: Paris"),
    ("get_weather", '{"town": "Paris"}', "get_weather: 'city' is a required property"),
    ("add", {"a": "two", "b": 1}, "add: a: 'two' is not of type 'integer'"),
    ("get_wether", "{}", "get_wether: no such tool; offered: get_weather, add, explode, slow"),
])
def test_a_bad_call_is_one_line_and_never_reaches_the_server(toolbox, name, arguments, expected):
    before = len(calls_of(toolbox.log))
    outcome = toolbox.call(name, arguments)
    assert outcome.kind == "bad call"
    assert outcome.line().startswith(f"[tool bad call] {expected}") and "\n" not in outcome.line()
    assert outcome.for_model().startswith("error (bad call): ")  # the model is told, and may try again
    assert len(calls_of(toolbox.log)) == before


def test_a_tool_that_raises_or_times_out_is_an_error_and_the_next_call_works(toolbox):
    failed = toolbox.call("explode", {"reason": "test"})
    assert failed.kind == "error" and failed.line().startswith("[tool error] explode: Error executing tool explode")
    started = time.monotonic()
    late = toolbox.call("slow", {"seconds": 30})
    took = time.monotonic() - started
    assert late.kind == "timeout" and late.line() == "[tool timeout] slow: no answer within 2 s (timeout, server tools)"
    assert 1.5 < took < 15
    assert toolbox.call("add", {"a": 1, "b": 1}).text == "2"  # the server and the session are still fine


def test_two_servers_offering_the_same_tool_are_prefixed_and_each_call_goes_to_its_own(tmp_path):
    alpha, beta = tmp_path / "alpha.jsonl", tmp_path / "beta.jsonl"
    specs = parse_mcp_config({"mcpServers": {"alpha": server_entry(alpha), "beta": server_entry(beta)}})
    with Toolbox(specs) as box:
        assert sorted(box.tools) == sorted(f"{s}__{t}" for s in ("alpha", "beta")
                                           for t in ("add", "explode", "get_weather", "slow"))
        assert box.call("beta__add", {"a": 3, "b": 4}).text == "7"
        assert box.tools["beta__add"].remote_name == "add"
    assert [c["tool"] for c in calls_of(beta)] == ["(started)", "add"]
    assert [c["tool"] for c in calls_of(alpha)] == ["(started)"]


def test_closing_the_toolbox_stops_the_stdio_server(tmp_path):
    log = tmp_path / "calls.jsonl"
    box = Toolbox(parse_mcp_config({"mcp_servers": {"tools": server_entry(log)}})).start()
    pid = calls_of(log)[0]["pid"]
    assert psutil.pid_exists(pid) and not gone(pid, timeout=0.5)
    box.close()
    assert gone(pid), f"the MCP server (pid {pid}) outlived its toolbox"


def test_a_server_that_cannot_start_is_one_line_naming_it(tmp_path):
    crash = tmp_path / "crash.py"
    crash.write_text("import sys\nsys.stderr.write('cannot open the forecast database\\n')\nsys.exit(3)\n")
    for entry, expected in (({"command": str(tmp_path / "no-such-program")}, "mcp_servers.broken: could not start"),
                            ({"command": "python", "args": [str(crash)]}, "cannot open the forecast database")):
        with pytest.raises(MCPServerError) as caught:
            Toolbox(parse_mcp_config({"mcp_servers": {"broken": entry}})).start()
        assert expected in str(caught.value) and "\n" not in str(caught.value)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_streamable_http_server_by_url(tmp_path):
    log, port = tmp_path / "calls.jsonl", _free_port()
    process = subprocess.Popen([sys.executable, str(SERVER), "--http", str(port)], env={**os.environ,
                               "MCP_CALL_LOG": str(log)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        specs = parse_mcp_config({"mcpServers": {"web": {"url": f"http://127.0.0.1:{port}/mcp"}}})
        with Toolbox(specs) as box:
            assert "get_weather" in box.tools
            assert box.call("get_weather", {"city": "Oslo"}).text == f"Weather in Oslo: {WEATHER_FACT}"
        assert {"tool": "get_weather", "arguments": {"city": "Oslo"}, "pid": process.pid} in calls_of(log)
    finally:
        process.terminate()
        process.wait(10)


# --- the tool loop, with a scripted model -------------------------------------------------------------------------
# A real model cannot be made to return malformed arguments on demand: these tests script the model's streamed
# answers (the openai client's chunks) and run everything else for real, MCP server included.

class ScriptedModel:
    """An openai-client stand-in whose chat.completions.create streams the next scripted answer."""

    def __init__(self, *answers: dict):
        self.answers = list(answers)
        self.requests: list[dict] = []
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))

    def create(self, **request):
        self.requests.append(json.loads(json.dumps(request)))
        answer = self.answers.pop(0)
        chunks = [SimpleNamespace(choices=[SimpleNamespace(delta=SimpleNamespace(content=piece, tool_calls=None),
                                                           finish_reason=None)], usage=None)
                  for piece in answer.get("text", [])]
        for index, (name, arguments) in enumerate(answer.get("calls", [])):
            function = SimpleNamespace(name=name, arguments=arguments)
            delta = SimpleNamespace(content=None, tool_calls=[SimpleNamespace(index=index, id=f"c{index}",
                                                                              function=function)])
            chunks.append(SimpleNamespace(choices=[SimpleNamespace(delta=delta, finish_reason=None)], usage=None))
        return _Stream(chunks)


class _Stream(list):
    def close(self) -> None:
        pass


def test_a_malformed_call_is_shown_told_to_the_model_and_the_turn_goes_on(toolbox):
    # The embedded model writes its arguments indented at times: the transcript shows them on one line.
    model = ScriptedModel({"calls": [("get_weather", '"Paris"'), ("add", '{\n  "a" : 2,\n  "b": 3\n}')]},
                          {"text": ["It ", "is five."]})
    conversation = Conversation()
    transcript = "".join(tool_chat_turn(model, "m", conversation, "weather?", toolbox, tool_choice="required"))
    assert transcript.splitlines() == [
        '[tool call] get_weather("Paris")',
        '[tool bad call] get_weather: arguments must be a JSON object such as {"city": ...}, not the string "Paris"',
        '[tool call] add({"a": 2, "b": 3})',
        "[tool result] add: 5",
        "It is five.",
    ]
    first, second = model.requests
    assert first["tool_choice"] == "required" and second["tool_choice"] == "none"  # a forced call, then the answer
    assert [t["function"]["name"] for t in first["tools"]] == ["get_weather", "add", "explode", "slow"]
    roles = [m["role"] for m in second["messages"]]
    assert roles == ["user", "assistant", "tool", "tool"]
    assert second["messages"][2]["tool_call_id"] == "c0"
    assert second["messages"][2]["content"].startswith("error (bad call): arguments must be a JSON object")
    assert second["messages"][3] == {"role": "tool", "tool_call_id": "c1", "content": "5"}
    assert conversation.messages[-1] == {"role": "assistant", "content": "It is five."}


def test_with_auto_the_model_may_call_again_until_the_round_limit(toolbox):
    calls = {"calls": [("add", '{"a": 1, "b": 1}')]}
    model = ScriptedModel(calls, calls, {"text": ["done"]})
    transcript = "".join(tool_chat_turn(model, "m", Conversation(), "add", toolbox, max_rounds=2))
    assert [r["tool_choice"] for r in model.requests] == ["auto", "auto", "none"]
    assert transcript.count("[tool result] add: 2") == 2 and transcript.endswith("done")


def test_a_named_tool_choice_is_sent_as_openais_named_choice_and_an_unknown_name_is_refused(toolbox):
    model = ScriptedModel({"text": ["ok"]})
    "".join(tool_chat_turn(model, "m", Conversation(), "hi", toolbox, tool_choice="get_weather"))
    assert model.requests[0]["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    with pytest.raises(ConfigError, match="--tool-choice 'weather': allowed: auto, required, none, or one of"):
        "".join(tool_chat_turn(model, "m", Conversation(), "hi", toolbox, tool_choice="weather"))


def test_the_llamacpp_engine_refuses_tools_in_one_line():
    from mixvllm_nb.api import server_for_config
    from mixvllm_nb.config import ServeConfig

    config = ServeConfig.model_validate({"backend": "llamacpp", "tools": {"enable_auto_tool_choice": True}})
    with pytest.raises(MixVLLMError, match=r"^tools.enable_auto_tool_choice: tool calling is not on this engine"):
        server_for_config(config).build_command()


def test_tool_calling_reaches_vllms_command_line(tmp_path):
    from mixvllm_nb.api import server_for_config
    from mixvllm_nb.config import config_from_dict

    def command(tools: dict, model: str | None = None) -> list[str]:
        config = {"backend": "vllm", "tools": tools, **({"model": {"name": model}} if model else {})}
        return server_for_config(config_from_dict(config)).build_command()

    on = command({"enable_auto_tool_choice": True})
    assert on[on.index("--enable-auto-tool-choice") + 1:][:2] == ["--tool-call-parser", "hermes"]
    assert command({"enable_auto_tool_choice": True}, "meta-llama/Llama-3.1-8B-Instruct")[-1] == "llama3_json"
    off = command({})
    assert "--enable-auto-tool-choice" not in off and "--tool-call-parser" not in off
    template = tmp_path / "tools.jinja"
    template.write_text("{{ messages }}")
    assert command({"tool_call_parser": "pythonic", "chat_template": str(template)})[-4:] == [
        "--tool-call-parser", "pythonic", "--chat-template", str(template)]
    with pytest.raises(ConfigError, match="tool_call_parser.*allowed: .*hermes"):
        command({"tool_call_parser": "hermez"})


def test_the_serve_fronts_take_the_tool_flags():
    from mixvllm_nb.cli import _serve_parser
    from mixvllm_nb.config.options import launch_overrides

    args = _serve_parser().parse_args(["--enable-auto-tool-choice", "--tool-call-parser", "hermes"])
    assert launch_overrides(vars(args)) == {"tools.enable_auto_tool_choice": True, "tools.tool_call_parser": "hermes"}


# --- mixvllm-chat ---------------------------------------------------------------------------------------------------

def test_mixvllm_chat_offers_the_tools_and_its_mcp_server_stops_with_it(tmp_path):
    """The terminal chat against a stand-in OpenAI server (which answers without calling tools): the request
    carries the MCP server's tools, /tools lists them, and the stdio server is gone once the chat ends."""
    from test_chat_client import run_chat
    from test_server_support import registered_upstream

    log, config = tmp_path / "calls.jsonl", tmp_path / "servers.yaml"
    config.write_text(yaml.safe_dump({"mcp_servers": {"tools": server_entry(log)}}))
    with registered_upstream("mcp-standin", api_key="sk-mcp", events=2, interval=0.01) as upstream:
        result = run_chat(["/tools", "hello", "/tool_choice add", "again", "/tool_choice nothing"],
                          {"MIXVLLM_SERVER": "mcp-standin"}, "--enable-mcp", "--mcp-config", str(config))
    assert result.returncode == 0, result.stderr
    assert "[tool] get_weather (tools): Return today's weather in a city." in result.stdout
    chats = [hit.json() for hit in upstream.hits if hit.path == "/v1/chat/completions"]
    assert [c["tool_choice"] for c in chats] == ["auto", {"type": "function", "function": {"name": "add"}}]
    assert [t["function"]["name"] for t in chats[0]["tools"]] == ["get_weather", "add", "explode", "slow"]
    assert "[--tool-choice 'nothing': allowed: auto, required, none, or one of the tools:" in result.stdout
    pid = calls_of(log)[0]["pid"]
    assert gone(pid), f"the MCP server (pid {pid}) outlived mixvllm-chat"


def test_mixvllm_chat_with_a_bad_mcp_config_exits_with_one_line(tmp_path):
    from test_chat_client import run_chat
    from test_server_support import registered_upstream

    config = tmp_path / "servers.json"
    config.write_text(json.dumps({"mcpServers": {"weather": {"args": ["server.py"]}}}))
    with registered_upstream("mcp-standin-bad", api_key="sk-mcp", events=1, interval=0.01):
        result = run_chat(["hello"], {"MIXVLLM_SERVER": "mcp-standin-bad"}, "--enable-mcp", "--mcp-config",
                          str(config))
    assert result.returncode == 1
    assert result.stderr.strip() == ("mixvllm-chat: mcpServers.weather.command: missing; "
                                     "give command (stdio) or url (HTTP)")


# --- with a real model: vLLM's CPU server with tool calling on --------------------------------------------------
# Measured on vLLM 0.32 CPU with the embedded SmolLM2-135M: tool_choice "required" or a tool's name returns
# tool_calls (the arguments are decoded under the tool's schema); "auto" answers in prose.

@pytest.fixture(scope="module")
def tools_vllm():
    """A vLLM CPU server of its own, with tool calling on (the session's shared one has it off)."""
    from mixvllm_nb.api import serve
    from mixvllm_nb.config import config_from_dict

    result = serve(config_from_dict({"backend": "vllm", "server": {"name": "mcp-tools"},
                                     "generation_defaults": {"temperature": 0.0, "max_tokens": 48},
                                     "tools": {"enable_auto_tool_choice": True}, "heartbeat_interval": 1.0}))
    server = result.server
    assert "--enable-auto-tool-choice" in server.build_command()
    yield server
    report = server.stop()
    assert report.clean, report.summary()


def _config(tmp_path: Path, log: Path, tools: str | None = None) -> Path:
    entry = server_entry(log)
    if tools:
        entry["env"]["MCP_TOOLS"] = tools
    path = tmp_path / "servers.yaml"
    path.write_text(yaml.safe_dump({"mcp_servers": {"tools": entry}}))
    return path


@pytest.mark.vllm
def test_the_model_is_made_to_call_a_tool_the_server_runs_it_and_the_answer_follows(tools_vllm, tmp_path):
    from mixvllm_nb.client import openai_client

    log = tmp_path / "calls.jsonl"
    conversation = Conversation()
    with Toolbox(load_mcp_config(_config(tmp_path, log, "get_weather"))) as box, \
            openai_client(tools_vllm.base_url, tools_vllm.api_key) as client:
        transcript = "".join(tool_chat_turn(client, tools_vllm.served_model_name, conversation,
                                            "What is the weather in Paris today?", box, tool_choice="required"))
    (received,) = [c for c in calls_of(log) if c["tool"] == "get_weather"]
    city = received["arguments"]["city"]
    lines = transcript.splitlines()
    assert lines[0] == f'[tool call] get_weather({json.dumps({"city": city})})', transcript
    assert lines[1] == f"[tool result] get_weather: Weather in {city}: {WEATHER_FACT}"
    assert "".join(lines[2:]).strip(), f"no answer after the tool's result: {transcript!r}"
    user, call, result, answer = conversation.messages
    assert call["tool_calls"][0]["function"]["name"] == "get_weather"
    assert result == {"role": "tool", "tool_call_id": call["tool_calls"][0]["id"],
                      "content": f"Weather in {city}: {WEATHER_FACT}"}
    assert answer["role"] == "assistant" and answer["content"].strip() and "tool_calls" not in answer


@pytest.mark.vllm
def test_mixvllm_chat_with_mcp_calls_the_named_tool(tools_vllm, tmp_path):
    from test_chat_client import run_chat

    log = tmp_path / "calls.jsonl"
    result = run_chat(["What is 2 plus 3?"], {"MIXVLLM_SERVER": "mcp-tools"}, "--enable-mcp", "--mcp-config",
                      str(_config(tmp_path, log)), "--tool-choice", "add", timeout=300)
    assert result.returncode == 0, result.stderr
    (received,) = [c for c in calls_of(log) if c["tool"] == "add"]
    a, b = received["arguments"]["a"], received["arguments"]["b"]
    assert f"[tool call] add({json.dumps({'a': a, 'b': b})})\n[tool result] add: {a + b}\n" in result.stdout
    answer = result.stdout.split(f"[tool result] add: {a + b}\n")[1]
    assert answer.strip(), result.stdout
    assert gone(calls_of(log)[0]["pid"]), "the MCP server outlived mixvllm-chat"


@pytest.mark.vllm
def test_the_chat_magic_with_mcp_calls_a_tool_and_keeps_its_servers_until_closed(tools_vllm, ip, tmp_path, capsys):
    from mixvllm_nb.magics.chat import close_toolboxes

    log = tmp_path / "calls.jsonl"
    config = _config(tmp_path, log, "get_weather")
    try:
        ip.run_line_magic("vllm_chat", f"--server mcp-tools --new --enable-mcp --mcp-config {config} "
                                       "--tool-choice required What is the weather in Paris?")
        out = capsys.readouterr().out
        (received,) = [c for c in calls_of(log) if c["tool"] == "get_weather"]
        city = received["arguments"]["city"]
        assert "MCP tools: get_weather (tools)" in out
        assert f"[tool result] get_weather: Weather in {city}: {WEATHER_FACT}\n" in out, out
        pid = calls_of(log)[0]["pid"]
        assert not gone(pid, timeout=0.5)  # kept between cells
    finally:
        close_toolboxes()
    assert gone(pid), "the MCP server outlived close_toolboxes()"


@pytest.mark.vllm
def test_auto_on_a_server_without_tool_calling_says_how_to_serve_it(vllm_server, toolbox):
    from mixvllm_nb.client import openai_client
    from mixvllm_nb.mcp_tools.chat import ToolChoiceError

    with openai_client(vllm_server.base_url, vllm_server.api_key) as client, pytest.raises(ToolChoiceError) as caught:
        "".join(tool_chat_turn(client, vllm_server.served_model_name, Conversation(), "hi", toolbox))
    assert "--enable-auto-tool-choice" in str(caught.value) and "\n" not in str(caught.value)
