"""Seed 004's model-garden API under Jupyter (/mixvllm/garden) and the OpenAPI description of every route.

Fast tests use the stand-in upstream (registered as the attached server ``garden``: it records what
arrives) and the stand-in backend ``standin-proc`` (a real process through the real lifecycle); one test
runs the seed's client against the session's real vLLM server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re

import psutil
import pytest
from jupyter_server.auth import Authorizer
from test_server_extension import auth, error_of
from test_server_support import STANDIN_MODEL, StandInProcess, registered_upstream
from tornado import web

from mixvllm_nb.extension.app import routes
from mixvllm_nb.extension.openapi import PATHS
from mixvllm_nb.process import registry
from mixvllm_nb.process.ports import free_port

G = "mixvllm/garden/api/v1"
KEY = "sk-garden-standin"
GARDEN_ROUTES = [
    ("POST", f"{G}/inference/load", json.dumps({"backend": "standin-proc", "model_path": STANDIN_MODEL})),
    ("POST", f"{G}/inference/unload", "{}"),
    ("GET", f"{G}/inference/status", None),
    ("POST", f"{G}/inference/generate", json.dumps({"prompt": "hi"})),
    ("POST", f"{G}/chat/completions", json.dumps({"messages": [{"role": "user", "content": "hi"}]})),
    ("POST", "mixvllm/garden/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "hi"}]})),
    ("GET", "mixvllm/api/openapi.json", None),
]
STANDIN_LOAD = {"backend": "standin-proc", "model_path": STANDIN_MODEL}


class DenyKernels(Authorizer):
    """Allows everything but starting kernels (so: no model servers either)."""

    def is_authorized(self, handler, user, action, resource):
        return not (action == "execute" and resource == "kernels")


@pytest.fixture
def fetch(http_server_client, jp_base_url, jp_serverapp):
    def _fetch(path, method="GET", body=None, headers=None, **options):
        return http_server_client.fetch(jp_base_url + path, method=method, body=body, headers=headers or {},
                                        raise_error=False, request_timeout=60, **options)
    return _fetch


@pytest.fixture
def token(jp_serverapp):
    return jp_serverapp.identity_provider.token


@pytest.fixture
def upstream():
    with registered_upstream("garden", api_key=KEY, events=3, interval=0.05) as stand_in:
        yield stand_in


async def events_of(fetch, path, body, token) -> list[dict]:
    """POST ``body`` and return the server-sent events' data, as they came in pieces."""
    pieces: list[bytes] = []
    response = await fetch(path, "POST", json.dumps(body), auth(token), streaming_callback=pieces.append)
    assert response.code == 200, response.code
    text = b"".join(pieces).decode()
    return [json.loads(line[6:]) if line[6:] != "[DONE]" else "[DONE]"
            for line in text.splitlines() if line.startswith("data: ")]


def test_openapi_describes_every_route_and_method():
    for pattern, handler in routes():
        path = re.sub(r"\(\?P<(\w+)>[^()]*\)", r"{\1}", pattern)
        assert path in PATHS, path
        methods = {m for m in ("get", "post", "delete", "put", "patch")
                   if m.upper() in handler.SUPPORTED_METHODS
                   and getattr(handler, m) is not getattr(web.RequestHandler, m)}
        assert methods and methods <= set(PATHS[path]), (path, methods, set(PATHS[path]))
    described = {re.sub(r"\(\?P<(\w+)>[^()]*\)", r"{\1}", pattern) for pattern, _ in routes()}
    assert set(PATHS) == described  # and nothing described that is not served


async def test_openapi_is_served_to_authenticated_users(fetch, token, jp_serverapp):
    assert (await fetch("mixvllm/api/openapi.json")).code == 403
    response = await fetch("mixvllm/api/openapi.json", headers=auth(token))
    document = json.loads(response.body)
    assert document["openapi"].startswith("3.") and f"/{G}/inference/generate" in document["paths"]
    assert document["servers"][0]["url"] + "/" == jp_serverapp.base_url  # the paths follow Jupyter's base URL


async def test_garden_routes_without_credentials_are_403_and_reach_nothing(fetch, upstream):
    for method, path, body in GARDEN_ROUTES:
        for headers in ({}, {"Authorization": "token wrong"}, {"Authorization": "Bearer wrong"}):
            response = await fetch(path, method, body, headers)
            assert response.code == 403, (method, path, headers)
            assert error_of(response)["type"] == "permission_error"
    assert upstream.hits == []
    assert registry.get("garden").attached  # the unload stopped nothing, the load replaced nothing


async def test_status_generate_and_chat_use_the_loaded_server(fetch, upstream, token):
    status = json.loads((await fetch(f"{G}/inference/status", headers=auth(token))).body)
    assert status["is_loaded"] is True and status["model_path"] == STANDIN_MODEL and status["timestamp"]
    body = {"prompt": "Once upon a time", "max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "stream": False}
    generated = await fetch(f"{G}/inference/generate", "POST", json.dumps(body), auth(token))
    assert generated.code == 200 and json.loads(generated.body)["text"] == "echo"
    sent = upstream.hits[-1]
    assert sent.path == "/v1/completions" and sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.json() == {"model": STANDIN_MODEL, "prompt": "Once upon a time", "max_tokens": 7,
                           "temperature": 0.5, "top_p": 0.9, "stream": False}
    events = await events_of(fetch, f"{G}/inference/generate", {"prompt": "x", "stream": True}, token)
    assert events == [{"text": f"tok{i} ", "finish_reason": None} for i in range(3)]
    for path in (f"{G}/chat/completions", "mixvllm/garden/v1/chat/completions"):
        chat = {"model": "my-model", "messages": [{"role": "user", "content": "What is AI?"}], "max_tokens": 5}
        answer = await fetch(path, "POST", json.dumps(chat), auth(token))
        assert answer.code == 200 and json.loads(answer.body)["choices"][0]["message"]["content"] == "echo"
        assert upstream.hits[-1].path == "/v1/chat/completions"
        assert upstream.hits[-1].json() == {**chat, "model": STANDIN_MODEL}  # "ignored": the loaded model answers
    chunks = await events_of(fetch, f"{G}/chat/completions", {**chat, "stream": True}, token)
    assert [c["choices"][0]["delta"]["content"] for c in chunks[:-1]] == ["tok0 ", "tok1 ", "tok2 "]
    assert chunks[-1] == "[DONE]"


async def test_several_10_mb_images_reach_the_model_where_the_proxy_refuses_them(fetch, upstream, token):
    images = [f"data:image/png;base64,{base64.b64encode(os.urandom(10 * 10**6)).decode()}" for _ in range(2)]
    images.append("https://example.com/image.jpg")
    content = [{"type": "text", "text": "Describe these"}] + [{"type": "image_url", "image_url": {"url": url}}
                                                              for url in images]
    chat = json.dumps({"model": "Qwen/Qwen2.5-VL-3B-Instruct", "messages": [{"role": "user", "content": content}]})
    assert len(chat) > 26 * 10**6
    refused = await fetch("mixvllm/servers/garden/v1/chat/completions", "POST", chat, auth(token))
    assert refused.code == 413 and upstream.hits == []  # the proxy's limit (4 MiB)
    answer = await fetch(f"{G}/chat/completions", "POST", chat, auth(token))
    assert answer.code == 200
    arrived = upstream.hits[-1].json()["messages"][0]["content"]
    assert [part["image_url"]["url"] for part in arrived[1:]] == images
    generate = {"prompt": "Describe these", "images": images, "max_tokens": 5}
    answer = await fetch(f"{G}/inference/generate", "POST", json.dumps(generate), auth(token))
    assert answer.code == 200
    sent = upstream.hits[-1]
    assert sent.path == "/v1/chat/completions"  # an image needs the chat template
    assert sent.json()["messages"] == [{"role": "user", "content": content[:1] + arrived[1:]}]
    assert sent.json()["max_tokens"] == 5 and "images" not in sent.json()


def multipart(fields: dict[str, str], files: list[tuple[str, str, str, bytes]]) -> tuple[bytes, str]:
    """Return a multipart/form-data body and its Content-Type (files: field, filename, content type, bytes)."""
    boundary = "mixvllm-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    for field, filename, kind, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
                     f"Content-Type: {kind}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def test_images_uploaded_as_files_reach_the_model_as_data_urls(fetch, upstream, token):
    small, big = b"\x89PNG small", os.urandom(10 * 10**6)  # 10 MB: within the 10 MiB per-image limit
    body, kind = multipart({"prompt": "42", "max_tokens": "5", "temperature": "0.5"},
                           [("images", "a.png", "image/png", small), ("images", "b.jpg", "image/jpeg", big)])
    answer = await fetch(f"{G}/inference/generate", "POST", body, auth(token, **{"Content-Type": kind}))
    assert answer.code == 200, answer.body
    sent = upstream.hits[-1].json()
    assert upstream.hits[-1].path == "/v1/chat/completions" and sent["max_tokens"] == 5 and sent["temperature"] == 0.5
    content = sent["messages"][0]["content"]
    assert content[0] == {"type": "text", "text": "42"}  # a prompt stays text, even when it reads as a number
    assert [part["image_url"]["url"] for part in content[1:]] == [
        f"data:image/png;base64,{base64.b64encode(small).decode()}",
        f"data:image/jpeg;base64,{base64.b64encode(big).decode()}"]
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is this?"}]}
    body, kind = multipart({"request": json.dumps(chat)}, [("image", "c.png", "image/png", small)])
    answer = await fetch(f"{G}/chat/completions", "POST", body, auth(token, **{"Content-Type": kind}))
    assert answer.code == 200, answer.body
    assert upstream.hits[-1].json()["messages"] == [chat["messages"][0], {"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{base64.b64encode(small).decode()}"}}]}]


async def test_an_image_over_the_limit_or_not_an_image_is_refused_in_one_line(fetch, upstream, token):
    over = os.urandom(10 * 2**20 + 1)
    cases = [
        (multipart({"prompt": "x"}, [("images", "huge.png", "image/png", over)]), 413, "upload 'huge.png' is 10,485,761"),
        (multipart({"prompt": "x"}, [("images", "notes.txt", "text/plain", b"hi")]), 400, "'text/plain' is not an image"),
        (multipart({"prompt": "x"}, [("attachment", "a.png", "image/png", b"x")]), 400, "file field 'attachment'"),
    ]
    inline = json.dumps({"prompt": "x", "images": [f"data:image/png;base64,{base64.b64encode(over).decode()}"]})
    cases.append(((inline.encode(), "application/json"), 413, "a data: URL image is 10,485,76"))
    for (body, kind), code, said in cases:
        response = await fetch(f"{G}/inference/generate", "POST", body, auth(token, **{"Content-Type": kind}))
        assert response.code == code, (said, response.code)
        message = error_of(response)["message"]
        assert said in message and "\n" not in message, message
    assert upstream.hits == []  # nothing reached the model


@pytest.mark.parametrize("jupyter_overrides", [{"MixVLLM": {"garden_max_body_bytes": 2000}}])
async def test_the_garden_body_limit_is_its_own_setting(fetch, upstream, token):
    small = json.dumps({"prompt": "x" * 1000})
    assert (await fetch(f"{G}/inference/generate", "POST", small, auth(token))).code == 200
    big = json.dumps({"prompt": "x" * 3000})
    for path in (f"{G}/inference/generate", f"{G}/chat/completions"):
        response = await fetch(path, "POST", big, auth(token))
        assert response.code == 413, path
        error = error_of(response)
        assert error["code"] == "body_too_large" and "garden_max_body_bytes" in error["message"]
    assert len(upstream.hits) == 1


async def test_load_reuses_then_unload_stops_a_real_process(fetch, token):
    try:
        loaded = await fetch(f"{G}/inference/load", "POST", json.dumps(STANDIN_LOAD), auth(token))
        assert loaded.code == 200, loaded.body
        answer = json.loads(loaded.body)
        assert answer["is_loaded"] and answer["outcome"] == "Launched" and answer["model_path"] == STANDIN_MODEL
        record = registry.get("garden")
        assert record.state == "ready" and record.owner["kind"] == "jupyter-server"
        status = json.loads((await fetch(f"{G}/inference/status", headers=auth(token))).body)
        assert status["is_loaded"] and status["model_path"] == STANDIN_MODEL
        again = await fetch(f"{G}/inference/load", "POST", json.dumps(STANDIN_LOAD), auth(token))
        assert json.loads(again.body)["outcome"] == "Reused" and registry.get("garden").pid == record.pid
        # The stand-in process answers 401 without the server's own key: the garden sent it.
        generated = await fetch(f"{G}/inference/generate", "POST", json.dumps({"prompt": "hi"}), auth(token))
        assert generated.code == 200 and json.loads(generated.body)["text"] == "echo"
    finally:
        unloaded = await fetch(f"{G}/inference/unload", "POST", "{}", auth(token))
    assert unloaded.code == 200 and "garden" in json.loads(unloaded.body)["message"]
    assert registry.get("garden", missing_ok=True) is None
    assert not psutil.pid_exists(record.pid) or psutil.Process(record.pid).status() == psutil.STATUS_ZOMBIE
    status = json.loads((await fetch(f"{G}/inference/status", headers=auth(token))).body)
    assert status["is_loaded"] is False and status["model_path"] is None
    gone = await fetch(f"{G}/inference/generate", "POST", json.dumps({"prompt": "hi"}), auth(token))
    assert gone.code == 404 and error_of(gone)["code"] == "model_not_loaded"


async def test_two_loads_at_once_start_one_server(fetch, token):
    try:
        first, second = await asyncio.gather(*(fetch(f"{G}/inference/load", "POST", json.dumps(STANDIN_LOAD),
                                                     auth(token)) for _ in range(2)))
        answers = [json.loads(first.body), json.loads(second.body)]
        assert sorted(a["outcome"] for a in answers) == ["Launched", "Reused"], answers
        assert all(a["is_loaded"] for a in answers)  # the reuser waited for the load too
        assert {a["server"]["pid"] for a in answers} == {registry.get("garden").pid}
    finally:
        await fetch(f"{G}/inference/unload", "POST", "{}", auth(token))
    assert registry.get("garden", missing_ok=True) is None


async def test_a_client_that_leaves_a_generate_stream_stops_the_upstream(fetch, jp_http_port, jp_base_url, token):
    with registered_upstream("garden", api_key=KEY, events=3, interval=5.0) as slow:
        reader, writer = await asyncio.open_connection("127.0.0.1", jp_http_port)
        body = json.dumps({"prompt": "x", "stream": True}).encode()
        writer.write(f"POST {jp_base_url}{G}/inference/generate HTTP/1.1\r\nHost: localhost\r\n"
                     f"Authorization: token {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        received = b""
        while b'"text": "tok0 "' not in received:
            received += await asyncio.wait_for(reader.read(4096), 10)
        writer.close()
        hit = slow.hits[0]
        # The next event is 5 s away: only a cancelled upstream request (not a failed write) ends it sooner.
        assert await asyncio.to_thread(hit.ended.wait, 2.5) and hit.client_left


async def test_load_of_a_config_already_served_uses_that_server_and_unload_leaves_it_running(fetch, token):
    kernel_side = StandInProcess(STANDIN_MODEL, name="kernel-side", port=free_port()).start()
    try:
        loaded = json.loads((await fetch(f"{G}/inference/load", "POST", json.dumps(STANDIN_LOAD),
                                         auth(token))).body)
        assert loaded["outcome"] == "Reused" and loaded["server"]["name"] == "kernel-side"
        assert registry.get("garden", missing_ok=True) is None  # no second model load
        status = json.loads((await fetch(f"{G}/inference/status", headers=auth(token))).body)
        assert status["is_loaded"] and status["server"]["name"] == "kernel-side"
        unloaded = json.loads((await fetch(f"{G}/inference/unload", "POST", "{}", auth(token))).body)
        assert "let go of kernel-side" in unloaded["message"]
        assert kernel_side.process_alive() if hasattr(kernel_side, "process_alive") else psutil.pid_exists(
            kernel_side.pid)
        assert registry.get("kernel-side").state == "ready"
        status = json.loads((await fetch(f"{G}/inference/status", headers=auth(token))).body)
        assert status["is_loaded"] is False
    finally:
        kernel_side.stop()


async def test_load_refuses_what_the_servers_api_refuses(fetch, token):
    cases = [({**STANDIN_LOAD, "env_vars": {"LD_PRELOAD": "/tmp/x.so"}}, "env_vars.LD_PRELOAD"),
             ({**STANDIN_LOAD, "name": "other"}, "server.name"),
             ({**STANDIN_LOAD, "tensor_parallel_size": 0}, "tensor_parallel_size"),
             ({**STANDIN_LOAD, "model_path": "./models/my-model"}, "model_path: './models/my-model' does not exist")]
    for body, field in cases:
        response = await fetch(f"{G}/inference/load", "POST", json.dumps(body), auth(token))
        assert response.code == 400, body
        error = error_of(response)
        assert error["code"] == "invalid_config" and field in error["message"], error
    assert registry.get("garden", missing_ok=True) is None


async def test_a_relative_model_path_is_a_folder_under_jupyters_root(fetch, token, jp_root_dir):
    (jp_root_dir / "models" / "my-model").mkdir(parents=True)
    body = {**STANDIN_LOAD, "model_path": "./models/my-model"}
    try:
        loaded = await fetch(f"{G}/inference/load", "POST", json.dumps(body), auth(token))
        assert loaded.code == 200, loaded.body
        assert json.loads(loaded.body)["model_path"] == str((jp_root_dir / "models" / "my-model").resolve())
    finally:
        await fetch(f"{G}/inference/unload", "POST", "{}", auth(token))


@pytest.mark.parametrize("jupyter_overrides", [{"ServerApp": {"authorizer_class": DenyKernels}}])
async def test_load_needs_the_permission_to_start_kernels(fetch, token):
    response = await fetch(f"{G}/inference/load", "POST", json.dumps(STANDIN_LOAD), auth(token))
    assert response.code == 403 and "execute on kernels" in error_of(response)["message"]
    assert registry.get("garden", missing_ok=True) is None
    assert (await fetch(f"{G}/inference/status", headers=auth(token))).code == 200


async def test_seed_client_against_real_vllm(fetch, token, vllm_server, jp_http_port, jp_base_url):
    from openai import OpenAI

    from conftest import SHARED_GENERATION_DEFAULTS

    # The shared server's config, so the garden uses it rather than loading the model a second time. Its
    # model by path: pytest-jupyter gives Jupyter another HOME, where "the default model" is another folder.
    model = {"name": vllm_server.config.model.name, "served_model_name": vllm_server.served_model_name}
    load = {"model": model, "generation_defaults": SHARED_GENERATION_DEFAULTS}
    loaded = json.loads((await fetch(f"{G}/inference/load", "POST", json.dumps(load), auth(token))).body)
    assert loaded["is_loaded"] and loaded["outcome"] == "Reused", loaded
    assert loaded["server"]["name"] == vllm_server.name
    status = json.loads((await fetch(f"{G}/inference/status", headers=auth(token))).body)
    assert status["is_loaded"] and status["model_path"] == vllm_server.config.model.name
    body = {"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0.0}
    answer = json.loads((await fetch(f"{G}/inference/generate", "POST", json.dumps(body), auth(token))).body)
    assert "Paris" in answer["text"], answer
    usage = answer["usage"]
    assert usage["completion_tokens"] == 6 and usage["total_tokens"] == usage["prompt_tokens"] + 6
    events = await events_of(fetch, f"{G}/inference/generate", {**body, "stream": True}, token)
    assert "".join(e["text"] for e in events) == answer["text"]
    assert events[-1]["finish_reason"] == "length" and all(e["finish_reason"] is None for e in events[:-1])
    # Seed 004's OpenAI client, its base URL changed to the garden's and Jupyter's token as its key.
    client = OpenAI(base_url=f"http://localhost:{jp_http_port}{jp_base_url}{G}", api_key=token)
    reply = await asyncio.to_thread(lambda: client.chat.completions.create(
        model="my-model", messages=[{"role": "user", "content": "What is machine learning?"}], max_tokens=8))
    assert reply.choices[0].message.content and reply.usage.completion_tokens == 8
    stream = await asyncio.to_thread(lambda: list(client.chat.completions.create(
        model="my-model", messages=[{"role": "user", "content": "Tell me a story"}], max_tokens=8, stream=True)))
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert [c.choices[0].finish_reason for c in stream if c.choices][-1] == "length"
    unloaded = json.loads((await fetch(f"{G}/inference/unload", "POST", "{}", auth(token))).body)
    assert f"let go of {vllm_server.name}" in unloaded["message"]
    assert vllm_server.is_ready()  # the session's server was only let go of
    assert json.loads((await fetch(f"{G}/inference/status", headers=auth(token))).body)["is_loaded"] is False
