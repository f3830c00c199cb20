"""The planner against what a real vLLM CPU server logged: two KV cache sizes, two dtypes, exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
    assert (planned.kv_cache_tokens, planned.max_concurrency) == (reported.tokens, reported.max_concurrency)
    assert planned.compare_with_log(logs.read_text(vllm_server.log_path)).matches


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


def test_status_shows_reported_and_planned_side_by_side(vllm_server):
    table = status_table(vllm_server.name)
    row = table.to_records()[0]
    assert row["KV cache tokens"] == row["planned"] == "23,296"
    assert row["gen tokens/s"] is not None and row["running"] == 0


def test_metrics_parser_on_a_live_scrape(vllm_server, openai_client, tmp_path):
    openai_client.completions.create(model=vllm_server.served_model_name, prompt="Hello", max_tokens=5)
    status, body = http_get(f"{vllm_server.base_url}/metrics")
    assert status == 200
    metrics = VllmMetrics.from_text(body.decode())
    assert metrics.model_names == (vllm_server.served_model_name,)
    assert metrics.generation_tokens_total >= 5 and metrics.prompt_tokens_total >= 1
    assert metrics.num_requests_running == 0 and 0 <= metrics.kv_cache_usage <= 1
    assert metrics.time_to_first_token.count >= 1
    assert json.dumps(metrics.to_dict())  # JSON-ready for the panel and the REST API
    assert Path(vllm_server.log_path).exists()
