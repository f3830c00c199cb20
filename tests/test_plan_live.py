"""The planner against what a real vLLM CPU server logged: two KV cache sizes, two dtypes, exact."""

from __future__ import annotations

import json
import threading
import time

import pytest
from device_expectations import GPU_PLAN_TOLERANCE, on_gpu, shared_kv_tokens

from mixvllm_nb import VLLMServer
from mixvllm_nb.config import ServeConfig
from mixvllm_nb.metrics import VllmMetrics
from mixvllm_nb.plan import plan_for_config
from mixvllm_nb.process import logs
from mixvllm_nb.process.http import http_get
from mixvllm_nb.status import status_table

pytestmark = pytest.mark.vllm  # a real engine in every test


def test_plan_equals_the_shared_servers_log(vllm_server):
    reported = logs.kv_cache_report(logs.read_text(vllm_server.log_path))
    planned = plan_for_config(vllm_server.config)
    assert reported.tokens == shared_kv_tokens(vllm_server.log_path)
    if on_gpu():  # the GPU overhead is an estimate
        assert abs(planned.kv_cache_tokens - reported.tokens) <= GPU_PLAN_TOLERANCE * reported.tokens
        return
    assert (planned.kv_cache_tokens, planned.max_concurrency) == (reported.tokens, reported.max_concurrency)
    assert planned.compare_with_log(logs.read_text(vllm_server.log_path)).matches


@pytest.mark.skipif(on_gpu(), reason="cpu_kv_cache_gib sizes the KV cache of vLLM's CPU build only")
def test_plan_equals_the_log_at_2_gib_in_bfloat16_with_an_odd_max_model_len():
    # 1000 is not a multiple of the block size, so vLLM's rounding is exercised too.
    inference = {"dtype": "bfloat16", "cpu_kv_cache_gib": 2, "max_model_len": 1000}
    with VLLMServer(config=ServeConfig.model_validate({"inference": inference})) as server:
        text = logs.read_text(server.log_path)
    reported = logs.kv_cache_report(text)
    planned = plan_for_config(ServeConfig.model_validate({"inference": inference}))
    assert reported.max_model_len == 1000
    assert reported.tokens == planned.kv_cache_tokens
    assert reported.max_concurrency == planned.max_concurrency
    assert planned.compare_with_log(text).matches


def test_status_shows_reported_and_planned_side_by_side_and_the_live_load(vllm_server, openai_client):
    idle = status_table(vllm_server.name).to_records()[0]
    logged = shared_kv_tokens(vllm_server.log_path)
    assert idle["KV cache tokens"] == f"{logged:,}"
    planned = int(idle["planned"].replace(",", ""))
    assert abs(planned - logged) <= GPU_PLAN_TOLERANCE * logged if on_gpu() else planned == logged
    assert idle["running"] == 0 and idle["gen tokens/s"] == 0.0

    # While an answer streams (64 tokens, no early stop: seconds on a CPU), one request runs and tokens flow.
    first_piece, done = threading.Event(), threading.Event()

    def stream() -> None:
        try:
            for _chunk in openai_client.completions.create(
                    model=vllm_server.served_model_name, prompt="Count from one to one hundred:", max_tokens=64,
                    stream=True, extra_body={"ignore_eos": True}):
                first_piece.set()
        finally:
            first_piece.set()
            done.set()

    worker = threading.Thread(target=stream, daemon=True)
    worker.start()
    try:
        assert first_piece.wait(60)
        busy = status_table(vllm_server.name).to_records()[0]
        finished_early = done.is_set()
    finally:
        worker.join(120)
    assert not finished_early, "the answer ended before the status was read; the load was not seen"
    assert busy["running"] == 1 and busy["gen tokens/s"] > 0, busy


def test_metrics_parser_on_a_live_scrape(vllm_server, openai_client):
    def scrape() -> VllmMetrics:
        status, body = http_get(f"{vllm_server.base_url}/metrics", api_key=vllm_server.api_key)
        assert status == 200
        return VllmMetrics.from_text(body.decode())

    before = scrape()
    reply = openai_client.completions.create(model=vllm_server.served_model_name, prompt="Hello", max_tokens=5,
                                             extra_body={"ignore_eos": True})
    deadline = time.monotonic() + 30  # the counters move with the engine's stats, a moment after the reply
    while (after := scrape()).request_success_total == before.request_success_total and time.monotonic() < deadline:
        time.sleep(0.2)
    assert after.model_names == (vllm_server.served_model_name,)
    # The counters moved by exactly this one request, as the server's own usage counts it.
    assert after.generation_tokens_total - before.generation_tokens_total == reply.usage.completion_tokens == 5
    assert after.prompt_tokens_total - before.prompt_tokens_total == reply.usage.prompt_tokens
    assert after.time_to_first_token.count - before.time_to_first_token.count == 1
    assert after.request_success_total - before.request_success_total == 1
    assert after.num_requests_running == 0 and 0 <= after.kv_cache_usage <= 1
    data = json.loads(json.dumps(after.to_dict()))  # JSON-ready for the panel and the REST API
    assert data["time_to_first_token"]["count"] == after.time_to_first_token.count
