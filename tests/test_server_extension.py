"""The server extension inside pytest-jupyter's server: auth on every route, the allowlist, errors, the servers API.

The upstream here is the stand-in of test_server_support (it records every request it receives), so
"no upstream hit" and "the upstream never saw the token" are checked on what actually arrived.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import psutil
import pytest
from jupyter_server.auth import Authorizer
from test_server_support import STANDIN_MODEL, registered_upstream
from tornado.httpclient import HTTPResponse

from mixvllm_nb.process import registry
from mixvllm_nb.process.ports import free_port
from mixvllm_nb.process.tree import start_stamp

UPSTREAM_KEY = "sk-standin-" + secrets.token_hex(8)
CHAT_BODY = json.dumps({"model": STANDIN_MODEL, "messages": [{"role": "user", "content": "hi"}]})

# Every route and method of the extension, with a body where the method takes one.
ROUTES = [
    ("GET", "mixvllm/api/servers", None),
    ("POST", "mixvllm/api/servers", json.dumps({"server": {"name": "never"}})),
    ("GET", "mixvllm/api/servers/standin", None),
    ("DELETE", "mixvllm/api/servers/standin", None),
    ("POST", "mixvllm/api/servers/standin/terminal", "{}"),
    ("GET", "mixvllm/servers/standin/v1/models", None),
    ("POST", "mixvllm/servers/standin/v1/completions", json.dumps({"model": STANDIN_MODEL, "prompt": "hi"})),
    ("POST", "mixvllm/servers/standin/v1/chat/completions", CHAT_BODY),
    ("POST", "mixvllm/servers/standin/v1/embeddings", json.dumps({"model": STANDIN_MODEL, "input": "hi"})),
    ("GET", "mixvllm/servers/standin/health", None),
    ("GET", "mixvllm/servers/standin/metrics", None),
]


class DenyMixvllm(Authorizer):
    """An authorizer that allows everything but this extension's resource."""

    def is_authorized(self, handler, user, action, resource):
        return resource != "mixvllm"


@pytest.fixture
def upstream():
    with registered_upstream("standin", api_key=UPSTREAM_KEY, events=3, interval=0.05) as stand_in:
        yield stand_in


@pytest.fixture
def fetch(http_server_client, jp_base_url, jp_serverapp):
    """Send a request with exactly the given headers (no token added) to a raw, unescaped path."""

    def _fetch(path: str, method: str = "GET", body: str | bytes | None = None, headers=None) -> HTTPResponse:
        return http_server_client.fetch(
            jp_base_url + path, method=method, body=body, headers=headers or {}, raise_error=False,
            allow_nonstandard_methods=True, request_timeout=30,
        )

    return _fetch


@pytest.fixture
def token(jp_serverapp):
    return jp_serverapp.identity_provider.token


def auth(token: str, **more: str) -> dict[str, str]:
    return {"Authorization": f"token {token}", **more}


def error_of(response: HTTPResponse) -> dict:
    """Return the OpenAI-shaped error of a response, checking its shape."""
    data = json.loads(response.body)
    assert set(data["error"]) == {"message", "type", "code"}, data
    return data["error"]


async def test_every_route_without_credentials_is_403_and_reaches_nothing(fetch, upstream):
    for method, path, body in ROUTES:
        for headers in ({}, {"Authorization": "token wrong-token"}, {"Authorization": "Bearer wrong-token"}):
            response = await fetch(path, method, body, headers)
            assert response.code == 403, (method, path, headers, response.code)
            assert error_of(response)["type"] == "permission_error"
    assert upstream.hits == []
    assert registry.get("standin", missing_ok=True) is not None  # the DELETEs stopped nothing
    assert registry.get("never", missing_ok=True) is None  # the POSTs started nothing


@pytest.mark.parametrize("jupyter_overrides", [{"ServerApp": {"authorizer_class": DenyMixvllm}}])
async def test_an_authorizer_that_denies_mixvllm_gets_403_everywhere(fetch, upstream, token):
    assert (await fetch("api/status", headers=auth(token))).code == 200  # the token itself is good
    for method, path, body in ROUTES:
        response = await fetch(path, method, body, auth(token))
        assert response.code == 403, (method, path, response.code)
    assert upstream.hits == []
    assert registry.get("standin", missing_ok=True) is not None


async def _login_cookie(fetch, token: str) -> str:
    response = await fetch("api/status", headers=auth(token))
    cookie = response.headers.get_list("Set-Cookie")[0].split(";")[0]
    assert cookie.startswith("username-")
    return cookie


async def test_cookie_post_needs_xsrf_and_cookie_get_works(fetch, upstream, token):
    cookie = await _login_cookie(fetch, token)
    models = await fetch("mixvllm/servers/standin/v1/models", headers={"Cookie": cookie})
    assert models.code == 200 and json.loads(models.body)["data"][0]["id"] == STANDIN_MODEL
    hits_before = len(upstream.hits)
    for path in ("mixvllm/servers/standin/v1/chat/completions", "mixvllm/api/servers"):
        refused = await fetch(path, "POST", CHAT_BODY, {"Cookie": cookie, "Content-Type": "application/json"})
        assert refused.code == 403, path
    assert len(upstream.hits) == hits_before
    xsrf = secrets.token_hex(16)  # double submit: the same value in the cookie and the header
    accepted = await fetch("mixvllm/servers/standin/v1/chat/completions", "POST", CHAT_BODY,
                           {"Cookie": f"{cookie}; _xsrf={xsrf}", "X-XSRFToken": xsrf})
    assert accepted.code == 200


async def test_foreign_host_and_origin_are_refused(fetch, upstream, token):
    cookie = await _login_cookie(fetch, token)
    foreign_host = await fetch("mixvllm/servers/standin/v1/models", headers=auth(token, Host="evil.example"))
    assert foreign_host.code == 403
    foreign_origin = await fetch("mixvllm/servers/standin/v1/models",
                                 headers={"Cookie": cookie, "Origin": "http://evil.example"})
    assert foreign_origin.code in (403, 404)
    api = await fetch("mixvllm/api/servers", headers={"Cookie": cookie, "Origin": "http://evil.example"})
    assert api.code in (403, 404)
    assert upstream.hits == []


ESCAPES = [
    "mixvllm/servers/standin/tokenize",
    "mixvllm/servers/standin/invocations",
    "mixvllm/servers/standin/pause",
    "mixvllm/servers/standin/v1/../tokenize",
    "mixvllm/servers/standin/v1/models/../../pause",
    "mixvllm/servers/standin/v1/%2e%2e/tokenize",
    "mixvllm/servers/standin/%2e%2e/%2e%2e/api/status",
    "mixvllm/servers/standin/v1%2fmodels%2f..%2f..%2fpause",
    "mixvllm/servers/standin//evil.example/v1/models",
    "mixvllm/servers/standin/http://evil.example/v1/models",
    "mixvllm/servers//127.0.0.1:1/v1/models",
    "mixvllm/servers/%2e%2e/v1/models",
    "mixvllm/servers/../api/status",
    "mixvllm/servers/standin/v1/models/",
    "mixvllm/servers/standin/v1/chat/completions/../../../health",
]


async def test_paths_that_try_to_escape_are_refused_before_the_upstream(fetch, upstream, token):
    for path in ESCAPES:
        for method in ("GET", "POST"):
            response = await fetch(path, method, "{}" if method == "POST" else None, auth(token))
            assert response.code in (403, 404, 405), (method, path, response.code)
    wrong_method = await fetch("mixvllm/servers/standin/v1/chat/completions", headers=auth(token))
    assert wrong_method.code == 405 and error_of(wrong_method)["code"] == "method_not_allowed"
    assert upstream.hits == []


async def test_the_upstream_never_sees_the_jupyter_token_or_cookies(fetch, upstream, token):
    cookie = await _login_cookie(fetch, token)
    xsrf = secrets.token_hex(16)
    headers = auth(token, Cookie=f"{cookie}; _xsrf={xsrf}; other=1", **{
        "X-XSRFToken": xsrf, "Referer": f"http://localhost/lab?token={token}", "Content-Type": "application/json",
        "X-Forwarded-For": "10.0.0.1", "X-Request-Id": "req-42"})
    chat = await fetch(f"mixvllm/servers/standin/v1/chat/completions?token={token}", "POST", CHAT_BODY, headers)
    assert chat.code == 200
    models = await fetch(f"mixvllm/servers/standin/v1/models?token={token}", headers={"Cookie": cookie})
    assert models.code == 200
    assert len(upstream.hits) == 2
    for hit in upstream.hits:
        seen = json.dumps(hit.headers) + hit.path
        assert token not in seen and "username-" not in seen and xsrf not in seen
        assert hit.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert hit.headers["Host"] == upstream.url.removeprefix("http://")
        lower = {name.lower() for name in hit.headers}
        assert not lower & {"cookie", "x-xsrftoken", "referer", "origin", "x-forwarded-for"}
    assert upstream.hits[0].path == "/v1/chat/completions" and upstream.hits[1].path == "/v1/models"
    assert upstream.hits[0].headers["X-Request-Id"] == "req-42"
    assert json.loads(upstream.hits[0].body) == json.loads(CHAT_BODY)  # the body goes through untouched


async def test_health_metrics_embeddings_and_completions_are_forwarded(fetch, upstream, token):
    assert (await fetch("mixvllm/servers/standin/health", headers=auth(token))).code == 200
    metrics = await fetch("mixvllm/servers/standin/metrics", headers=auth(token))
    assert metrics.code == 200 and b"standin_requests_total" in metrics.body
    assert metrics.headers["Content-Type"].startswith("text/plain")
    embeddings = await fetch("mixvllm/servers/standin/v1/embeddings", "POST",
                             json.dumps({"model": STANDIN_MODEL, "input": "x"}), auth(token))
    assert json.loads(embeddings.body)["data"][0]["embedding"] == [0.0]
    stream = await fetch("mixvllm/servers/standin/v1/completions", "POST",
                         json.dumps({"model": STANDIN_MODEL, "prompt": "x", "stream": True}), auth(token))
    assert stream.headers["Content-Type"] == "text/event-stream"
    assert stream.body.decode().count("data: ") == 4 and stream.body.endswith(b"data: [DONE]\n\n")
    assert [hit.path for hit in upstream.hits] == ["/health", "/metrics", "/v1/embeddings", "/v1/completions"]


async def test_unknown_server_is_404_in_openai_shape(fetch, token):
    response = await fetch("mixvllm/servers/nobody/v1/models", headers=auth(token))
    assert response.code == 404
    error = error_of(response)
    assert error["code"] == "server_not_found" and "nobody" in error["message"]


def _launched_record(name: str, base_url: str, **changes) -> registry.ServerRecord:
    me = psutil.Process()
    record = registry.ServerRecord(
        name=name, backend="vllm", model="m", served_model_name="m", host="127.0.0.1",
        port=int(base_url.rsplit(":", 1)[1]), base_url=base_url, api_key=UPSTREAM_KEY, pid=me.pid,
        create_time=start_stamp(me.pid), state="starting", config={"server": {"name": name}},
    )
    for key, value in changes.items():
        setattr(record, key, value)
    registry.save(record)
    return record


async def test_a_starting_server_is_503_with_retry_after(fetch, token):
    _launched_record("warming", f"http://127.0.0.1:{free_port()}")  # nothing listens there yet
    try:
        response = await fetch("mixvllm/servers/warming/v1/models", headers=auth(token))
        assert response.code == 503
        assert response.headers["Retry-After"] == "5"
        assert error_of(response)["code"] == "server_starting"
    finally:
        registry.remove("warming")


async def test_a_stale_starting_record_of_a_healthy_server_is_forwarded(fetch, upstream, token):
    # A detached server whose owner went away before writing "ready": the proxy asks /health.
    _launched_record("stale", upstream.url)
    try:
        response = await fetch("mixvllm/servers/stale/v1/models", headers=auth(token))
        assert response.code == 200
        assert [hit.path for hit in upstream.hits] == ["/health", "/v1/models"]
    finally:
        registry.remove("stale")


async def test_a_client_that_leaves_while_a_starting_server_is_probed_sends_nothing_on(
        http_server_client, jp_http_port, jp_base_url, token):
    import asyncio

    from test_server_support import StandInUpstream

    with StandInUpstream(api_key=UPSTREAM_KEY, health_delay=1.0) as slow:
        _launched_record("probed", slow.url)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", jp_http_port)
            body = json.dumps({"model": "m", "prompt": "hi", "max_tokens": 5}).encode()
            writer.write(f"POST {jp_base_url}mixvllm/servers/probed/v1/completions HTTP/1.1\r\n"
                         f"Host: localhost:{jp_http_port}\r\n"
                         f"Authorization: token {token}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
            for _ in range(100):  # the proxy is asking /health, which answers in 1 s (within MixVLLM.health_timeout)
                if slow.hits:
                    break
                await asyncio.sleep(0.02)
            writer.close()  # the client leaves during the probe
            await asyncio.sleep(3)  # the probe has answered "healthy" by now
            assert [hit.path for hit in slow.hits] == ["/health"]  # the completion was never sent
        finally:
            registry.remove("probed")


async def test_a_dead_server_is_502(fetch, upstream, token):
    _launched_record("crashed", upstream.url, state="crashed")
    _launched_record("vanished", upstream.url, state="ready", create_time=1.0)  # its pid is another process now
    try:
        for name in ("crashed", "vanished"):
            response = await fetch(f"mixvllm/servers/{name}/v1/models", headers=auth(token))
            assert response.code == 502, name
            assert error_of(response)["code"] == "server_dead"
        assert upstream.hits == []
    finally:
        registry.remove("crashed")
        registry.remove("vanished")


async def test_a_body_over_the_default_4_mib_is_413_before_forwarding(fetch, upstream, token):
    big = b'{"pad": "' + b"x" * (4 * 2**20) + b'"}'
    response = await fetch("mixvllm/servers/standin/v1/chat/completions", "POST", big, auth(token))
    assert response.code == 413 and error_of(response)["code"] == "body_too_large"
    assert upstream.hits == []


@pytest.mark.parametrize("jupyter_overrides", [{"MixVLLM": {"max_body_bytes": 1000}}])
async def test_the_body_limit_is_configurable(fetch, upstream, token):
    small = json.dumps({"model": STANDIN_MODEL, "messages": [], "pad": "x" * 800})
    large = json.dumps({"model": STANDIN_MODEL, "messages": [], "pad": "x" * 1200})
    assert (await fetch("mixvllm/servers/standin/v1/chat/completions", "POST", large, auth(token))).code == 413
    assert upstream.hits == []
    assert (await fetch("mixvllm/servers/standin/v1/chat/completions", "POST", small, auth(token))).code == 200
    assert len(upstream.hits) == 1


async def test_servers_api_lists_and_shows_servers_without_secrets(fetch, upstream, token, jp_base_url):
    listing = await fetch("mixvllm/api/servers", headers=auth(token))
    assert listing.code == 200
    assert UPSTREAM_KEY not in listing.body.decode()
    (model,) = [m for m in json.loads(listing.body) if m["name"] == "standin"]
    assert model["state"] == "ready" and model["kind"] == "attached" and "api_key" not in model
    assert model["urls"]["proxy"] == f"{jp_base_url}mixvllm/servers/standin/v1"
    one = await fetch("mixvllm/api/servers/standin", headers=auth(token))
    assert json.loads(one.body)["model"] == STANDIN_MODEL and UPSTREAM_KEY not in one.body.decode()
    missing = await fetch("mixvllm/api/servers/nobody", headers=auth(token))
    assert missing.code == 404 and error_of(missing)["code"] == "server_not_found"


async def test_servers_api_rejects_invalid_configs_with_field_paths(fetch, token):
    names_before = {r.name for r in registry.list_records()}
    cases = [
        ({"inference": {"gpu_memory_utilization": 2}}, "inference.gpu_memory_utilization"),
        ({"generation_defaults": {"temperature": -1}}, "generation_defaults.temperature"),
        ({"bogus": 1}, "bogus"),
        ({"server": {"name": "bad name!"}}, "server.name"),
    ]
    for body, path in cases:
        response = await fetch("mixvllm/api/servers", "POST", json.dumps(body), auth(token))
        assert response.code == 400, body
        error = error_of(response)
        assert path in error["message"] and error["code"] == "invalid_config", error
    for raw in ("{not json", "[1, 2]"):
        response = await fetch("mixvllm/api/servers", "POST", raw, auth(token))
        assert response.code == 400 and error_of(response)["code"] == "invalid_json"
    assert {r.name for r in registry.list_records()} == names_before


async def test_servers_api_starts_proxies_and_stops_a_real_process(fetch, token):
    # A stand-in backend (a small script, see test_server_support) runs the real lifecycle:
    # launch, registry, heartbeat, proxy, stop. It starts listening 1.5 s after launch.
    body = {"backend": "standin-proc", "model": {"name": STANDIN_MODEL}, "server": {"name": "fresh"}}
    started = await fetch("mixvllm/api/servers", "POST", json.dumps(body), auth(token))
    assert started.code == 202, started.body
    model = json.loads(started.body)
    assert model["state"] == "starting" and model["outcome"] == "Launched"
    assert model["started_by"] == "jupyter-server"
    key = registry.get("fresh").api_key
    assert key and key not in started.body.decode()
    try:
        early = await fetch("mixvllm/servers/fresh/v1/models", headers=auth(token))
        assert early.code == 503 and early.headers["Retry-After"]
        deadline = time.monotonic() + 30
        while json.loads((await fetch("mixvllm/api/servers/fresh", headers=auth(token))).body)["state"] != "ready":
            assert time.monotonic() < deadline, "the stand-in server never became ready"
            await _tick()
        models = await fetch("mixvllm/servers/fresh/v1/models", headers=auth(token))
        assert models.code == 200  # so the proxy sent the server's own key (it answers 401 otherwise)
        again = await fetch("mixvllm/api/servers", "POST", json.dumps(body), auth(token))
        assert again.code == 200 and json.loads(again.body)["outcome"] == "Reused"
        pid = registry.get("fresh").pid
    finally:
        stopped = await fetch("mixvllm/api/servers/fresh", "DELETE", headers=auth(token))
    assert stopped.code == 200 and "fresh" in json.loads(stopped.body)["message"]
    assert registry.get("fresh", missing_ok=True) is None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    gone = await fetch("mixvllm/servers/fresh/v1/models", headers=auth(token))
    assert gone.code == 404


async def test_deleting_an_attached_server_forgets_it_without_stopping_it(fetch, upstream, token):
    response = await fetch("mixvllm/api/servers/standin", "DELETE", headers=auth(token))
    assert response.code == 200 and "detached" in json.loads(response.body)["message"]
    assert registry.get("standin", missing_ok=True) is None
    missing = await fetch("mixvllm/api/servers/standin", "DELETE", headers=auth(token))
    assert missing.code == 404
    assert upstream.hits == []  # forgetting sends nothing to the server, which keeps running


async def test_deleting_a_server_another_live_kernel_owns_needs_force(fetch, token):
    from test_server_support import owned_elsewhere

    with owned_elsewhere("kernels-own") as (owner, pid):
        refused = await fetch("mixvllm/api/servers/kernels-own", "DELETE", headers=auth(token))
        assert refused.code == 409 and error_of(refused)["code"] == "owned_elsewhere"
        assert f"(pid {owner.pid})" in error_of(refused)["message"] and "?force=true" in error_of(refused)["message"]
        assert psutil.pid_exists(pid) and registry.get("kernels-own").pid == pid
        bad = await fetch("mixvllm/api/servers/kernels-own?force=maybe", "DELETE", headers=auth(token))
        assert bad.code == 400 and "force='maybe'" in error_of(bad)["message"]
        stopped = await fetch("mixvllm/api/servers/kernels-own?force=true", "DELETE", headers=auth(token))
        assert stopped.code == 200 and "nothing left" in json.loads(stopped.body)["message"]
        assert registry.get("kernels-own", missing_ok=True) is None


def test_the_extension_is_found_by_jupyter_and_defaults_to_4_mib(jp_serverapp):
    import mixvllm_nb
    from mixvllm_nb.extension.app import MixVLLMApp

    points = mixvllm_nb._jupyter_server_extension_points()
    assert points == [{"module": "mixvllm_nb.extension", "app": MixVLLMApp}]
    assert "mixvllm_nb" in jp_serverapp.extension_manager.extensions
    assert jp_serverapp.extension_manager.extensions["mixvllm_nb"].enabled
    assert jp_serverapp.web_app.settings["mixvllm"].config.max_body_bytes == 4 * 2**20


def test_pip_install_enables_the_extension(tmp_path):
    """A non-editable ``pip install`` into a fresh venv turns the extension on in that venv's Jupyter.

    The package's own dependencies are not downloaded again: after the install, a ``.pth`` file lends the
    fresh venv this environment's site-packages (behind its own, so its mixvllm_nb is the one imported).
    The sources are copied first so that the build leaves nothing in the working tree.
    """
    import os
    import re
    import shutil
    import subprocess
    import sys
    import sysconfig

    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "src"
    source.mkdir()
    for part in ("pyproject.toml", "README.md"):
        shutil.copy2(root / part, source / part)
    for part in ("jupyter-config", "mixvllm_nb"):
        shutil.copytree(root / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    # pip install . = build a wheel, install it; the build uses this environment's setuptools (no download).
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(tmp_path / "dist"),
                    str(source)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("mixvllm_nb-*.whl"))
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)

    shipped = venv / "etc" / "jupyter" / "jupyter_server_config.d" / "mixvllm_nb.json"
    assert json.loads(shipped.read_text()) == {"ServerApp": {"jpserver_extensions": {"mixvllm_nb": True}}}
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "deps-from-the-test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "PYTHON", "VIRTUAL_ENV"))}
    env["JUPYTER_CONFIG_DIR"] = str(tmp_path / "user-config")  # no user config can turn it on instead
    where = subprocess.run([str(python), "-c", "import mixvllm_nb; print(mixvllm_nb.__file__)"], env=env,
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert where.startswith(site), where  # the installed copy, not the repository's
    listing = subprocess.run([str(python), "-m", "jupyter_server", "extension", "list"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    text = re.sub(r"\x1b\[[0-9;]*m", "", listing.stdout + listing.stderr)  # no colours
    # Under the fresh venv's own config dir: enabled, and the installed copy loads ("OK").
    section = text.split(f"Config dir: {venv / 'etc' / 'jupyter'}", 1)[1].split("Config dir:", 1)[0]
    assert re.search(r"mixvllm_nb\s+enabled", section) and re.search(r"mixvllm_nb 0\.1\.0\s+OK", section), text


async def _tick() -> None:
    import asyncio

    await asyncio.sleep(0.2)  # lets the server's event loop answer while we poll



async def test_stopping_the_extension_stops_its_own_servers_and_closes_its_client(fetch, token, jp_serverapp):
    # Jupyter's shutdown calls stop_extension: what it started without detach stops with it, as a kernel's does.
    bodies = {name: {"backend": "standin-proc", "model": {"name": STANDIN_MODEL}, "server": {"name": name},
                     "env_vars": {"WHICH": name}}  # two configs: otherwise the second would reuse the first
              for name in ("owned-by-jupyter", "detached-from-jupyter")}
    owned = await fetch("mixvllm/api/servers", "POST", json.dumps(bodies["owned-by-jupyter"]), auth(token))
    detached = await fetch("mixvllm/api/servers?detach=true", "POST", json.dumps(bodies["detached-from-jupyter"]),
                           auth(token))
    assert owned.code == detached.code == 202
    pids = {name: registry.get(name).pid for name in bodies}
    from mixvllm_nb.extension import upstream

    await fetch("mixvllm/servers/owned-by-jupyter/v1/models", headers=auth(token))  # may keep a connection idle
    app = jp_serverapp.extension_manager.extension_apps["mixvllm_nb"]
    try:
        await next(iter(app)).stop_extension()
        import asyncio

        assert not upstream._IDLE.get(asyncio.get_running_loop())  # no kept-alive upstream connection left open
        assert registry.get("owned-by-jupyter", missing_ok=True) is None
        gone = psutil.pid_exists(pids["owned-by-jupyter"]) is False or \
            psutil.Process(pids["owned-by-jupyter"]).status() == psutil.STATUS_ZOMBIE
        assert gone
        assert psutil.Process(pids["detached-from-jupyter"]).is_running()
    finally:
        from mixvllm_nb.api import stop_server

        stop_server("detached-from-jupyter")
