"""Routes: one name in front of several servers, through Jupyter's proxy, chosen by the body's model.

Fast tests use stand-in upstreams (test_server_support: they record every request they receive, so "which
server answered" is read from what arrived) inside pytest-jupyter's server; two ``vllm`` tests put the
session's real vLLM server and a real llama.cpp server behind one route in a real ``jupyter server``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx
import psutil
import pytest
from IPython.core.error import UsageError
from test_server_extension import auth, error_of
from test_server_support import Hit, JupyterProcess, StandInUpstream

from mixvllm_nb.errors import ConfigError, NameTakenError
from mixvllm_nb.process import registry, routes
from mixvllm_nb.process.tree import start_stamp


@contextmanager
def member(name: str, model: str, *, listed: tuple[str, ...] = (), **options):
    """A stand-in registered as ``name`` serving ``model`` (its record's served name), listing ``listed`` too
    (as vLLM lists a LoRA adapter beside its base model)."""
    with StandInUpstream(api_key=f"sk-{name}", **options) as stand_in:
        record = stand_in.register(name)
        record.model = record.served_model_name = model
        registry.save(record)
        base = stand_in._server.RequestHandlerClass

        class Listing(base):  # type: ignore[misc, valid-type]
            def do_GET(self) -> None:
                if self.path != "/v1/models":
                    return super().do_GET()
                stand_in.hits.append(Hit("GET", self.path, dict(self.headers.items()), b"", time.monotonic()))
                self._json(200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": name}
                                                            for m in (model, *listed)]})

        stand_in._server.RequestHandlerClass = Listing
        try:
            yield stand_in
        finally:
            registry.remove(name)


def chats(stand_in: StandInUpstream) -> list[Hit]:
    return [hit for hit in stand_in.hits if hit.path.startswith("/v1/chat")]


@pytest.fixture
def pair():
    with member("alpha", "model-a") as a, member("beta", "model-b", listed=("adapter-b",), events=4,
                                                 interval=0.3) as b:
        routes.set_route("duo", ["alpha", "beta"])
        try:
            yield a, b
        finally:
            routes.remove_route("duo")


@pytest.fixture
def fetch(http_server_client, jp_base_url, jp_serverapp):
    def _fetch(path, method="GET", body=None, headers=None, **options):
        return http_server_client.fetch(jp_base_url + path, method=method, body=body, headers=headers or {},
                                        raise_error=False, request_timeout=60, allow_nonstandard_methods=True,
                                        **options)
    return _fetch


@pytest.fixture
def token(jp_serverapp):
    return jp_serverapp.identity_provider.token


def chat_body(model: str | None, **more) -> str:
    body = {"messages": [{"role": "user", "content": "hi"}], **more}
    return json.dumps(body if model is None else {"model": model, **body})


# ---------------------------------------------------------------- storage


def test_a_route_is_stored_0600_and_seen_by_another_process(pair, state_dir):
    assert routes.get_route("duo") == {"name": "duo", "servers": ["alpha", "beta"],
                                       "models": {"alpha": "model-a", "beta": "model-b"}}
    assert stat.S_IMODE(os.stat(state_dir / "routes.json").st_mode) == 0o600
    assert routes.is_route("duo") and not routes.is_route("alpha") and not routes.is_route("nothing")
    seen = subprocess.run([sys.executable, "-c", "from mixvllm_nb.process import routes; print(routes.list_routes())"],
                          capture_output=True, text=True, timeout=60, env=os.environ)
    assert seen.stdout.strip() == "{'duo': ['alpha', 'beta']}", seen.stderr
    assert routes.remove_route("duo") and routes.list_routes() == {} and not routes.remove_route("duo")


def test_a_route_name_must_not_be_a_server_and_members_must_be_registered(pair):
    with pytest.raises(NameTakenError, match=r"^route 'alpha': a server has that name; choose another route name$"):
        routes.set_route("alpha", ["beta"])
    with pytest.raises(ConfigError) as info:
        routes.set_route("trio", ["alpha", "nobody", "../x"])
    message = str(info.value)
    assert "\n" not in message and "'nobody', '../x' not a registered server" in message
    assert re.search(r"registered: ([^,]+, )*alpha, beta$", message), message  # others may run beside them
    with pytest.raises(ConfigError, match="give at least one server"):
        routes.set_route("trio", [])
    with pytest.raises(ConfigError, match="invalid server name"):
        routes.set_route("bad/name", ["alpha"])
    assert routes.list_routes() == {"duo": ["alpha", "beta"]}  # nothing half-written


def test_routes_from_a_yaml_file(pair, tmp_path):
    good = tmp_path / "routes.yaml"
    good.write_text("routes:\n  both: [alpha, beta]\n  one: [beta]\n")
    assert [r["name"] for r in routes.routes_from_file(good)] == ["both", "one"]
    assert routes.list_routes() == {"both": ["alpha", "beta"], "duo": ["alpha", "beta"], "one": ["beta"]}
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\n  both: alpha\n")
    with pytest.raises(ConfigError, match=r"routes.both: expected a list of server names"):
        routes.routes_from_file(bad)
    for name in ("both", "one"):
        routes.remove_route(name)


# ---------------------------------------------------------------- the proxy


async def test_each_model_reaches_its_own_server_with_its_own_key(fetch, pair, token):
    a, b = pair
    for model, target, other in (("model-a", a, b), ("model-b", b, a), ("adapter-b", b, a)):
        before = len(chats(other))
        response = await fetch("mixvllm/servers/duo/v1/chat/completions", "POST", chat_body(model), auth(token))
        assert response.code == 200, response.body
        echo = json.loads(response.body)
        assert echo["request"]["model"] == model
        assert chats(target)[-1].headers["Authorization"] == f"Bearer sk-{'alpha' if target is a else 'beta'}"
        assert len(chats(other)) == before, model  # the other server never saw it


async def test_models_lists_every_model_of_every_member(fetch, pair, token):
    response = await fetch("mixvllm/servers/duo/v1/models", headers=auth(token))
    assert response.code == 200
    assert [(m["id"], m["owned_by"]) for m in json.loads(response.body)["data"]] == [
        ("model-a", "alpha"), ("model-b", "beta"), ("adapter-b", "beta")]


async def test_an_unknown_model_is_404_listing_the_models_and_no_model_is_400(fetch, pair, token):
    a, b = pair
    response = await fetch("mixvllm/servers/duo/v1/chat/completions", "POST", chat_body("gpt-4"), auth(token))
    assert response.code == 404
    error = error_of(response)
    assert error["code"] == "model_not_found"
    assert error["message"] == "model 'gpt-4' is not served behind route 'duo'; models: model-a, model-b, adapter-b"
    response = await fetch("mixvllm/servers/duo/v1/completions", "POST", json.dumps({"prompt": "x"}), auth(token))
    assert response.code == 400 and error_of(response)["code"] == "missing_model"
    assert "'model' is required" in error_of(response)["message"]
    response = await fetch("mixvllm/servers/duo/v1/completions", "POST", "{not json", auth(token))
    assert response.code == 400 and error_of(response)["code"] == "invalid_json"
    assert chats(a) == chats(b) == []


async def test_no_token_is_403_and_refused_paths_reach_nothing(fetch, pair, token):
    a, b = pair
    for method, path, body in (("GET", "v1/models", None), ("POST", "v1/chat/completions", chat_body("model-a")),
                               ("POST", "v1/completions", json.dumps({"model": "model-b", "prompt": "x"}))):
        for headers in ({}, {"Authorization": "token wrong"}):
            response = await fetch(f"mixvllm/servers/duo/{path}", method, body, headers)
            assert response.code == 403 and error_of(response)["type"] == "permission_error"
    for method, path, code in (("GET", "health", "path_not_routed"), ("GET", "metrics", "path_not_routed"),
                               ("POST", "sleep", "path_not_allowed"), ("POST", "wake_up", "path_not_allowed"),
                               ("GET", "is_sleeping", "path_not_allowed")):
        response = await fetch(f"mixvllm/servers/duo/{path}", method, "{}" if method == "POST" else None, auth(token))
        assert response.code == 404 and error_of(response)["code"] == code, path
    assert a.hits == b.hits == []


async def test_a_member_that_ended_answers_502_for_its_model(fetch, pair, token):
    a, _ = pair
    me = psutil.Process()
    ghost = registry.ServerRecord(name="ghost", backend="vllm", model="model-g", served_model_name="model-g",
                                  host="127.0.0.1", port=1, base_url="http://127.0.0.1:1", pid=me.pid,
                                  create_time=start_stamp(me.pid), state="crashed")
    registry.save(ghost)
    try:
        routes.set_route("duo", ["alpha", "ghost"])
        for forgotten in (False, True):  # crashed, then its record gone (stopped): the route still knows its model
            if forgotten:
                registry.remove("ghost")
            response = await fetch("mixvllm/servers/duo/v1/chat/completions", "POST", chat_body("model-g"),
                                   auth(token))
            assert response.code == 502 and error_of(response)["code"] == "server_dead", forgotten
            assert "'ghost'" in error_of(response)["message"]
        response = await fetch("mixvllm/servers/duo/v1/chat/completions", "POST", chat_body("model-a"), auth(token))
        assert response.code == 200 and len(chats(a)) == 1
    finally:
        registry.remove("ghost")


async def test_a_server_registered_under_a_routes_name_takes_it_over(fetch, pair, token):
    with member("duo", "model-d") as d:
        assert not routes.is_route("duo")
        response = await fetch("mixvllm/servers/duo/v1/chat/completions", "POST", chat_body("model-a"), auth(token))
        assert response.code == 200 and len(chats(d)) == 1 and chats(pair[0]) == []


async def test_streamed_events_arrive_as_they_are_sent(fetch, pair, token):
    arrivals: list[tuple[float, bytes]] = []
    start = time.monotonic()
    response = await fetch("mixvllm/servers/duo/v1/chat/completions", "POST", chat_body("model-b", stream=True),
                           auth(token), streaming_callback=lambda data: arrivals.append((time.monotonic(), data)))
    assert response.code == 200 and response.headers["Content-Type"] == "text/event-stream"
    text = b"".join(data for _, data in arrivals).decode()
    assert [json.loads(line[6:])["choices"][0]["delta"]["content"] for line in text.splitlines()
            if line.startswith("data: {")] == ["tok0 ", "tok1 ", "tok2 ", "tok3 "]
    # 4 events 0.3 s apart: a buffering path delivers them at once, after ~0.9 s; ours as they come.
    assert arrivals[0][0] - start < 0.8 and arrivals[-1][0] - arrivals[0][0] >= 0.6, arrivals


async def test_a_client_that_leaves_mid_stream_ends_the_members_request(http_server, http_server_port, jp_base_url,
                                                                        pair, token):
    _, b = pair
    body = chat_body("model-b", stream=True).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", http_server_port[1])
    writer.write((f"POST {jp_base_url}mixvllm/servers/duo/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  f"Authorization: token {token}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    await writer.drain()
    assert b"data: " in await asyncio.wait_for(reader.readuntil(b"data: "), 10)  # the first event came
    writer.close()
    left_at = time.monotonic()
    (hit,) = chats(b)
    while not hit.ended.is_set() and time.monotonic() - left_at < 10:
        await asyncio.sleep(0.05)
    assert hit.client_left, "the member finished its answer: the proxy never closed the request"
    assert hit.ended_at - left_at < 2.0


# ---------------------------------------------------------------- REST and the magic


async def test_the_routes_api(fetch, pair, token, jp_base_url):
    body = json.dumps({"name": "both", "servers": ["beta", "alpha"]})
    assert (await fetch("mixvllm/api/routes", "POST", body, {})).code == 403
    response = await fetch("mixvllm/api/routes", "POST", body, auth(token))
    assert response.code == 201
    assert json.loads(response.body)["urls"]["proxy"] == f"{jp_base_url}mixvllm/servers/both/v1"
    assert (await fetch("mixvllm/api/routes", "POST", body, auth(token))).code == 409
    listed = json.loads((await fetch("mixvllm/api/routes", headers=auth(token))).body)
    assert [(r["name"], r["servers"]) for r in listed] == [("both", ["beta", "alpha"]), ("duo", ["alpha", "beta"])]
    response = await fetch("mixvllm/api/routes/both", "PUT", json.dumps({"servers": ["alpha"]}), auth(token))
    assert response.code == 200 and json.loads(response.body)["models"] == {"alpha": "model-a"}
    assert json.loads((await fetch("mixvllm/api/routes/both", headers=auth(token))).body)["servers"] == ["alpha"]
    response = await fetch("mixvllm/api/routes", "POST", json.dumps({"name": "beta", "servers": ["alpha"]}), auth(token))
    assert response.code == 409 and error_of(response)["code"] == "name_taken"
    response = await fetch("mixvllm/api/routes/both", "PUT", json.dumps({"servers": ["nobody"]}), auth(token))
    assert response.code == 400 and re.search(r"registered: ([^,]+, )*alpha, beta$", error_of(response)["message"])
    for method in ("GET", "PUT", "DELETE"):
        assert (await fetch("mixvllm/api/routes/both", method, "{}" if method == "PUT" else None)).code == 403
    assert (await fetch("mixvllm/api/routes/both", "DELETE", headers=auth(token))).code == 200
    response = await fetch("mixvllm/api/routes/both", "DELETE", headers=auth(token))
    assert response.code == 404 and error_of(response)["code"] == "route_not_found"
    assert routes.list_routes() == {"duo": ["alpha", "beta"]}


def test_the_route_magic(ip, pair, tmp_path, capsys):
    made = ip.run_line_magic("vllm_route", "both alpha beta")
    assert made["servers"] == ["alpha", "beta"]
    assert "route both: alpha (model-a), beta (model-b);" in capsys.readouterr().out
    assert ip.run_line_magic("vllm_route", "--list") == {"both": ["alpha", "beta"], "duo": ["alpha", "beta"]}
    with pytest.raises(UsageError, match=r"^route 'trio': 'nobody' not a registered server; registered: ([^,]+, )*alpha, "
                                         r"beta$"):
        ip.run_line_magic("vllm_route", "trio nobody")
    with pytest.raises(UsageError, match="expected %vllm_route NAME SERVER"):
        ip.run_line_magic("vllm_route", "--list --remove both")
    ip.run_line_magic("vllm_route", "--remove both")
    with pytest.raises(UsageError, match="no route named 'both'"):
        ip.run_line_magic("vllm_route", "--remove both")
    (tmp_path / "routes.yaml").write_text("routes:\n  solo: [beta]\n")
    assert ip.run_line_magic("vllm_route", f"--config {tmp_path / 'routes.yaml'}")["servers"] == ["beta"]
    routes.remove_route("solo")


def test_the_client_magic_reaches_a_route_through_the_proxy_only(ip, pair, monkeypatch):
    monkeypatch.setenv("JUPYTER_SERVER_URL", "http://127.0.0.1:8888/")  # what a kernel of that Jupyter server has
    monkeypatch.setenv("JUPYTER_TOKEN", "jupyter-token")
    with pytest.raises(UsageError, match=r"^duo is a route \(several servers behind one name\): use --via proxy$"):
        ip.run_line_magic("vllm_client", "duo")
    client = ip.run_line_magic("vllm_client", "duo --via proxy")
    assert str(client.base_url) == "http://127.0.0.1:8888/mixvllm/servers/duo/v1/"
    assert client.api_key == "jupyter-token"


# ---------------------------------------------------------------- two real engines


@pytest.fixture(scope="module")
def two_engines(vllm_server, tmp_path_factory):
    """The shared vLLM server and a llama.cpp server (the embedded model, under another name) behind one route,
    in a real ``jupyter server`` process."""
    from mixvllm_nb.api import server_for_config
    from mixvllm_nb.config import config_from_dict

    light = server_for_config(config_from_dict({"backend": "llamacpp", "server": {"name": "light-route"},
                                                "model": {"served_model_name": "smol-gguf"},
                                                "generation_defaults": {"temperature": 0.0, "max_tokens": 24}}))
    light.start()
    home = tmp_path_factory.mktemp("route-jupyter")
    (home / "root").mkdir()
    jupyter = JupyterProcess(home / "root", home).start()
    routes.set_route("engines", [vllm_server.name, light.name])
    try:
        yield vllm_server, light, jupyter
    finally:
        routes.remove_route("engines")
        jupyter.stop()
        report = light.stop()
        assert report.clean, report.summary()


@pytest.mark.vllm
def test_one_route_url_reaches_each_real_engine(two_engines):
    from openai import OpenAI

    vllm, light, jupyter = two_engines
    client = OpenAI(base_url=jupyter.proxy_v1("engines"), api_key=jupyter.token, max_retries=0)
    assert sorted(m.id for m in client.models.list().data) == sorted([vllm.served_model_name, "smol-gguf"])
    question = [{"role": "user", "content": "What is the capital of France?"}]
    for server in (vllm, light):
        with open(server.log_path) as log:
            log.seek(0, 2)
            stream = client.chat.completions.create(model=server.served_model_name, messages=question, stream=True,
                                                    temperature=0, max_tokens=24)
            chunks = [c for c in stream if c.choices and c.choices[0].delta.content]
            assert len(chunks) > 3 and "Paris" in "".join(c.choices[0].delta.content for c in chunks)
            assert {c.model for c in chunks} == {server.served_model_name}  # the engine that answered names itself
            assert "chat/completions" in log.read()  # and logged the request


@pytest.mark.vllm
def test_real_route_errors(two_engines):
    vllm, _, jupyter = two_engines
    url = f"{jupyter.proxy_v1('engines')}/chat/completions"
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
    answer = httpx.post(url, json=body, headers={"Authorization": f"Bearer {jupyter.token}"}, timeout=60)
    assert answer.status_code == 404
    assert answer.json()["error"]["message"].endswith(f"models: {vllm.served_model_name}, smol-gguf")
    assert httpx.post(url, json=body, timeout=60).status_code == 403
    body["model"] = vllm.served_model_name
    assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {vllm.api_key}"}, timeout=60).status_code == 403
