"""The trust boundary on the real engines: another local user who reaches the port gets nothing without the key.

vLLM checks its key only under ``/v1``; mixvllm_nb starts it with a guard that checks it on every route
(``mixvllm_nb/engine_side/mixvllm_key_guard.py``). llama.cpp's server checks its key everywhere itself.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.vllm  # a real engine in every test


def _ask(url: str, *, key: str = "", body: dict | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_vllm_answers_no_route_but_health_without_its_key(vllm_server):
    base, model = vllm_server.base_url, vllm_server.served_model_name
    keyless = {
        "/invocations": {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
        "/tokenize": {"model": model, "prompt": "hello"},
        "/metrics": None,
        "/openapi.json": None,
    }
    for path, body in keyless.items():
        assert _ask(base + path, body=body) == 401, path  # vLLM alone answers 200 to all four
        assert _ask(base + path, key="wrong", body=body) == 401, path
    assert _ask(base + "/tokenize", key=vllm_server.api_key, body=keyless["/tokenize"]) == 200
    assert _ask(base + "/metrics", key=vllm_server.api_key) == 200
    assert _ask(base + "/health") == 200  # liveness stays open: it says nothing


def test_our_own_calls_still_reach_every_guarded_route(vllm_server):
    from mixvllm_nb.status import scrape

    assert scrape(vllm_server) is not None  # /metrics, with the key: what status and the panel show
    assert "/invocations" in vllm_server.served_routes()  # read from /openapi.json, with the key
