"""A real vLLM server (CPU build) with the embedded SmolLM2: requests, defaults, crash, stop, cleanup."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from device_expectations import engine_process_names, own_server_settings, shared_kv_tokens

from conftest import SHARED_GENERATION_DEFAULTS, marked_alive
from mixvllm_nb import VLLMServer
from mixvllm_nb.errors import ConfigError, PortInUseError, ServerStartError
from mixvllm_nb.process import registry
from mixvllm_nb.process.ports import port_is_free

pytestmark = pytest.mark.vllm  # a real engine in every test

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


def test_models_lists_the_served_model(openai_client, vllm_server):
    ids = [model.id for model in openai_client.models.list().data]
    assert ids == ["HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert vllm_server.state == "ready"


def test_chat_answers_paris_at_temperature_zero(openai_client, vllm_server):
    reply = openai_client.chat.completions.create(
        model=vllm_server.served_model_name, messages=CAPITAL, temperature=0, max_tokens=20
    )
    assert "Paris" in reply.choices[0].message.content


def test_streaming_arrives_in_several_chunks(openai_client, vllm_server):
    stream = openai_client.chat.completions.create(
        model=vllm_server.served_model_name, messages=CAPITAL, temperature=0, max_tokens=20, stream=True
    )
    pieces = [chunk.choices[0].delta.content for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    assert len(pieces) > 3
    assert "Paris" in "".join(pieces)


def test_generation_defaults_apply_to_requests_that_set_none(openai_client, vllm_server):
    # The shared server has max_tokens=24 and temperature=0 as server-side defaults: a request
    # that sets neither is cut at 24 tokens and is deterministic.
    prompt = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]
    first = openai_client.chat.completions.create(model=vllm_server.served_model_name, messages=prompt)
    second = openai_client.chat.completions.create(model=vllm_server.served_model_name, messages=prompt)
    assert first.usage.completion_tokens == SHARED_GENERATION_DEFAULTS["max_tokens"]
    assert first.choices[0].finish_reason == "length"
    assert first.choices[0].message.content == second.choices[0].message.content


def test_the_pytorch_profiler_starts_stops_and_writes_traces(vllm_server, tmp_path):
    from mixvllm_nb.api import server_for_config
    from mixvllm_nb.config import config_from_dict
    from mixvllm_nb.errors import ConfigError

    with pytest.raises(ConfigError, match="was not started with profile: {enabled: true, tool: pytorch}"):
        vllm_server.profile("start")
    traces = tmp_path / "traces"
    server = server_for_config(config_from_dict({
        "server": {"name": "profiled"}, "heartbeat_interval": 1.0, "inference": own_server_settings(),
        "profile": {"enabled": True, "tool": "pytorch", "output_dir": str(traces)}}))
    server.start()
    try:
        assert server.profile("start") == str(traces.resolve())
        assert server.generate("Hello", max_tokens=4).text
        server.profile("stop")
        written = sorted(p.name for p in traces.glob("*.pt.trace.json.gz"))
        assert any(name.startswith("rank0.") for name in written), written  # the engine's worker
        assert all((traces / name).stat().st_size > 10_000 for name in written)
    finally:
        report = server.stop()
    assert report.clean, report.summary()


def test_chat_and_generate_return_the_text_with_usage_and_timings(vllm_server):
    seen: list[str] = []
    reply = vllm_server.chat("What is the capital of France?", on_piece=seen.append)
    assert "Paris" in reply.text and "".join(seen) == reply.text and len(seen) > 3
    assert 0 < reply.usage["completion_tokens"] <= SHARED_GENERATION_DEFAULTS["max_tokens"]
    assert reply.usage["total_tokens"] == reply.usage["prompt_tokens"] + reply.usage["completion_tokens"]
    completion = vllm_server.generate("The capital of France is", max_tokens=5)
    assert completion.usage["completion_tokens"] == 5 and str(completion) == completion.text
    assert 0 < completion.stats.first_piece_s <= completion.stats.elapsed_s
    assert completion.stats.summary().startswith("5 tokens (")
    told = vllm_server.chat([{"role": "user", "content": "Hi"}], system="Answer with one word.", max_tokens=3)
    assert told.usage["completion_tokens"] <= 3


def test_api_key_guards_v1_and_stays_out_of_command_line_and_log(vllm_server):
    from mixvllm_nb.process.http import http_get

    status, _ = http_get(f"{vllm_server.base_url}/v1/models")
    assert status == 401
    status, _ = http_get(f"{vllm_server.base_url}/v1/models", api_key=vllm_server.api_key)
    assert status == 200
    key = vllm_server.api_key
    tree = [psutil.Process(vllm_server.pid), *psutil.Process(vllm_server.pid).children(recursive=True)]
    assert all(key not in " ".join(proc.cmdline()) for proc in tree)
    with open(vllm_server.log_path) as handle:
        assert key not in handle.read()


def test_registry_entry_is_private_and_complete(vllm_server):
    path = registry.servers_dir() / f"{vllm_server.name}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    for field in ("pid", "create_time", "port", "model", "config", "log_path", "owner", "started_at"):
        assert data[field], field
    assert data["api_key"] == vllm_server.api_key
    from mixvllm_nb.process.view import server_view

    public = server_view(registry.get(vllm_server.name))  # the one view every front shows
    assert "api_key" not in public and vllm_server.api_key not in json.dumps(public)


def test_list_endpoints_names_the_same_endpoints_before_and_after_start_and_served_routes_reads_openapi(
        vllm_server):
    from mixvllm_nb import VLLMServer

    before = VLLMServer(vllm_server.model, port=vllm_server.port)  # never started
    assert set(before.list_endpoints()) == set(vllm_server.list_endpoints())
    assert set(vllm_server.list_endpoints()) >= {"health", "models", "completions", "chat", "embeddings", "metrics"}
    routes = vllm_server.served_routes()
    assert "/v1/chat/completions" in routes and "/invocations" in routes
    assert routes["/health"] == f"{vllm_server.base_url}/health"


def test_status_reports_kv_cache_from_the_log(vllm_server):
    status = vllm_server.status()
    assert status["state"] == "ready" and status["pid"] == vllm_server.pid
    assert status["kv_cache"].startswith(f"{shared_kv_tokens(vllm_server.log_path):,} tokens")


def test_explicit_busy_port_is_refused_before_launch(vllm_server):
    before = set(psutil.pids())
    server = VLLMServer(port=vllm_server.port)
    with pytest.raises(PortInUseError, match=f"port {vllm_server.port} .* already in use"):
        server.start()
    assert server.process is None
    assert not any("vllm.entrypoints" in " ".join(p.cmdline()) for p in map(psutil.Process, set(psutil.pids()) - before) if p.is_running())


def test_same_name_twice_is_refused(vllm_server):
    with pytest.raises(ConfigError, match="already registered"):
        VLLMServer(name=vllm_server.name).start()


def test_broken_model_fails_fast_with_cause_and_leaves_nothing(tmp_path):
    folder = tmp_path / "broken-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["NoSuchForCausalLM"], "model_type": "nosuch"}))
    server = VLLMServer(str(folder), heartbeat_interval=0.5)
    started = time.monotonic()
    with pytest.raises(ServerStartError) as info:
        server.start()
    assert time.monotonic() - started < 60
    message = str(info.value)
    assert "\n" not in message and "exited while starting" in message
    assert info.value.cause and info.value.log_tail
    assert marked_alive(server.record.marker) == []
    assert registry.get(server.name, missing_ok=True) is None
    assert port_is_free(server.host, server.port)


def _own_server(**kw) -> VLLMServer:
    return VLLMServer(heartbeat_interval=0.5, heartbeat_timeout=3, **own_server_settings(), **kw).start()


def test_stop_leaves_no_descendant_and_frees_the_port():
    server = _own_server(debug_mode=True)
    tree = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
    names = {p.cmdline()[0] for p in tree}
    assert engine_process_names() <= names
    report = server.stop()
    assert report.clean, report.summary()
    assert {info.pid for info in report.processes} >= {p.pid for p in tree}
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree)
    assert marked_alive(server.record.marker) == []
    assert port_is_free(server.host, server.port)
    assert registry.get(server.name, missing_ok=True) is None
    assert server.state == "stopped"


def test_owner_killed_with_sigkill_stops_its_server_within_10s(tmp_path):
    # The owner is a plain Python program using the API. The engine is the light one: the same watchdog
    # stops a vLLM tree when its kernel is SIGKILLed (test_magics), this is about an owner that is no kernel.
    script = tmp_path / "owner.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, sys, time
            from mixvllm_nb import create_server
            server = create_server("llamacpp", name="orphan-test", startup_timeout=300).start()
            print(json.dumps({"pid": server.pid, "marker": server.record.marker, "port": server.port}), flush=True)
            time.sleep(600)
            """
        )
    )
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        info = json.loads(owner.stdout.readline())
    finally:
        owner.kill()  # SIGKILL: no atexit, no cleanup of its own
        owner.wait()
    killed_at = time.monotonic()

    def gone() -> bool:
        return not marked_alive(info["marker"]) and registry.get("orphan-test", missing_ok=True) is None

    while not gone() and time.monotonic() - killed_at < 10:
        time.sleep(0.2)
    assert marked_alive(info["marker"]) == [], "server outlived its SIGKILLed owner by 10 s"
    assert port_is_free("127.0.0.1", info["port"])
    assert registry.get("orphan-test", missing_ok=True) is None
