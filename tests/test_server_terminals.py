"""Chat terminals: created through the API with Jupyter's terminal manager, driven over their websocket.

``mixvllm-chat`` runs inside the terminal through the proxy of the Jupyter server the terminal belongs
to, against the stand-in upstream (what it sent is on record) and against the session's real vLLM
server (the last test), and the answer is read off the screen.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import time
from pathlib import Path

import pytest
from jupyter_server.auth import Authorizer
from test_server_support import registered_upstream
from tornado.httpclient import HTTPClientError


class DenyTerminals(Authorizer):
    """Allows this extension but not Jupyter's terminals."""

    def is_authorized(self, handler, user, action, resource):
        return resource != "terminals"


UPSTREAM_KEY = "sk-terminal-standin"


@pytest.fixture
def upstream():
    with registered_upstream("standin", api_key=UPSTREAM_KEY, events=3, interval=0.01) as stand_in:
        yield stand_in


async def open_terminal(jp_fetch, name: str, **body) -> dict:
    response = await jp_fetch("mixvllm", "api", "servers", name, "terminal", method="POST", body=json.dumps(body))
    assert response.code == 201
    return json.loads(response.body)


async def read_until(ws, needle: str, timeout: float) -> str:
    """Return the terminal's output up to the first ``needle`` (fails after ``timeout`` seconds)."""
    screen = ""
    deadline = time.monotonic() + timeout
    while needle not in screen:
        left = deadline - time.monotonic()
        assert left > 0, f"{needle!r} did not appear within {timeout} s; the terminal showed:\n{screen[-3000:]}"
        try:
            message = await asyncio.wait_for(ws.read_message(), left)
        except TimeoutError:
            continue
        assert message is not None, f"the terminal closed; it showed:\n{screen[-3000:]}"
        kind, *rest = json.loads(message)
        if kind == "stdout":
            screen += rest[0]
    return screen


async def test_terminal_starts_in_the_asked_folder_with_a_private_token_file(
    jp_fetch, jp_ws_fetch, jp_serverapp, jp_root_dir, jp_http_port, upstream
):
    (jp_root_dir / "sub").mkdir()
    info = await open_terminal(jp_fetch, "standin", path="sub", auto_start_chat=False)
    assert info["url"] == f"/a%40b/terminals/{info['name']}" and info["chat_started"] is False
    listed = json.loads((await jp_fetch("api", "terminals")).body)
    assert info["name"] in [t["name"] for t in listed]  # one of Jupyter's own terminals
    ws = await jp_ws_fetch("terminals", "websocket", info["name"])
    try:
        # Every variable of the shell (exported or not) and the environment its programs get, to a file.
        ws.write_message(json.dumps(["stdin", "(set; env; tr '\\0' '\\n' </proc/$$/environ) >vars.txt; "
                                              'echo "ENV:$MIXVLLM_SERVER|$MIXVLLM_CHAT_TOKEN_FILE|$(pwd)|END"\r']))
        screen = await read_until(ws, "|END\r\n", timeout=30)  # the typed line ends in |END" instead
    finally:
        ws.close()
    found = re.search(r"ENV:standin\|(.*?)\|(.*?)\|END\r\n", screen)
    assert found, screen
    token_file, cwd = found.groups()
    assert cwd.strip() == str((jp_root_dir / "sub").resolve())
    token = jp_serverapp.identity_provider.token
    variables = (jp_root_dir / "sub" / "vars.txt").read_text()
    assert "MIXVLLM_CHAT_TOKEN_FILE=" in variables and token not in variables
    assert "OPENAI_API_KEY" not in variables
    # The token is in a file only its owner may read, with the proxy's URL: mixvllm-chat's alone.
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(token_file)).st_mode) == 0o700
    assert json.loads(Path(token_file).read_text()) == {
        "server": "standin", "api_key": token,
        "base_url": f"http://127.0.0.1:{jp_http_port}/a%40b/mixvllm/servers/standin/v1"}
    assert upstream.hits == []  # opening a terminal sends nothing to the model server


async def test_chat_in_the_terminal_reaches_the_server_through_the_proxy(jp_fetch, jp_ws_fetch, upstream):
    info = await open_terminal(jp_fetch, "standin")  # the stand-in's config leaves auto_start_chat on
    assert info["chat_started"] is True
    ws = await jp_ws_fetch("terminals", "websocket", info["name"])
    try:
        await read_until(ws, "/help for commands", timeout=60)  # it listed the model: it connected
        ws.write_message(json.dumps(["stdin", "hello\r"]))
        await read_until(ws, "tok0 tok1 tok2", timeout=60)
        ws.write_message(json.dumps(["stdin", "/exit\r"]))
    finally:
        ws.close()
    chats = [hit for hit in upstream.hits if hit.path == "/v1/chat/completions"]
    assert [hit.json()["messages"][-1]["content"] for hit in chats] == ["hello"]
    assert chats[0].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"  # the proxy's key, not the token


async def test_a_servers_chat_terminals_close_when_it_ends_and_never_come_back_as_a_shell(jp_fetch, upstream):
    from mixvllm_nb.process import registry

    first = await open_terminal(jp_fetch, "standin", auto_start_chat=False)
    second = await open_terminal(jp_fetch, "standin", auto_start_chat=False)
    assert (first["name"], second["name"]) == ("standin_chat_1", "standin_chat_2")  # named for their server
    plain = json.loads((await jp_fetch("api", "terminals", method="POST", body="{}")).body)["name"]
    registry.remove("standin")  # the server is gone (stopped by its kernel, say)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        running = {t["name"] for t in json.loads((await jp_fetch("api", "terminals")).body)}
        if not running & {first["name"], second["name"]}:
            break
        await asyncio.sleep(0.5)
    assert running == {plain}  # both chats closed; the user's own terminal is left alone
    with pytest.raises(HTTPClientError) as refused:  # what JupyterLab does with the old link
        await jp_fetch("api", "terminals", method="POST", body=json.dumps({"name": first["name"]}))
    assert refused.value.code == 409
    assert "has ended" in refused.value.response.body.decode()
    await jp_fetch("api", "terminals", plain, method="DELETE")


@pytest.mark.parametrize("body, field, allowed", [
    ({"path": 5}, "path", "a string"),
    ({"path": ["sub"]}, "path", "a string"),
    ({"auto_start_chat": "false"}, "auto_start_chat", "true, false or null"),
    ({"auto_start_chat": 0}, "auto_start_chat", "true, false or null"),
    ({"auto_start": False}, "auto_start", "allowed: path, auto_start_chat"),
])
async def test_terminal_fields_of_the_wrong_type_are_400_naming_the_field(jp_fetch, upstream, body, field, allowed):
    with pytest.raises(HTTPClientError) as err:
        await open_terminal(jp_fetch, "standin", **body)
    assert err.value.code == 400
    error = json.loads(err.value.response.body)["error"]
    assert error["message"].startswith(f"{field}: ") and allowed in error["message"]
    assert "\n" not in error["message"] and error["code"] == "invalid_field"
    assert json.loads((await jp_fetch("api", "terminals")).body) == []  # no terminal, no chat started


async def test_terminal_paths_outside_the_root_and_unknown_servers_are_refused(jp_fetch, upstream):
    for path, code in (("..", 403), ("../..", 403), ("/etc", 403), ("sub/../../x", 403), ("missing", 400)):
        with pytest.raises(HTTPClientError) as err:
            await open_terminal(jp_fetch, "standin", path=path, auto_start_chat=False)
        assert err.value.code == code, path
    with pytest.raises(HTTPClientError) as err:
        await open_terminal(jp_fetch, "nobody", auto_start_chat=False)
    assert err.value.code == 404
    listed = json.loads((await jp_fetch("api", "terminals")).body)
    assert listed == []  # no refused request left a terminal behind


async def test_terminal_websocket_is_refused_without_auth(jp_fetch, jp_ws_fetch, upstream):
    info = await open_terminal(jp_fetch, "standin", auto_start_chat=False)
    for headers in ({"Authorization": "token wrong"}, {"Authorization": ""}):
        with pytest.raises(HTTPClientError) as err:
            await jp_ws_fetch("terminals", "websocket", info["name"], headers=headers)
        assert err.value.code == 403


async def test_terminal_route_without_credentials_is_403(jp_fetch, upstream):
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("mixvllm", "api", "servers", "standin", "terminal", method="POST", body="{}",
                       headers={"Authorization": "token wrong"})
    assert err.value.code == 403
    assert json.loads((await jp_fetch("api", "terminals")).body) == []


@pytest.mark.parametrize("jupyter_overrides", [{"ServerApp": {"terminals_enabled": False}}])
async def test_disabled_terminals_answer_409_and_open_nothing(jp_fetch, jp_serverapp, upstream):
    with pytest.raises(HTTPClientError) as err:
        await open_terminal(jp_fetch, "standin")
    assert err.value.code == 409
    message = json.loads(err.value.response.body)["error"]["message"]
    assert "terminals are disabled" in message
    assert "terminal_manager" not in jp_serverapp.web_app.settings


@pytest.mark.parametrize("jupyter_overrides", [{"ServerApp": {"authorizer_class": DenyTerminals}}])
async def test_a_user_denied_terminals_gets_no_shell_through_mixvllm(jp_fetch, jp_serverapp, upstream):
    with pytest.raises(HTTPClientError) as err:
        await open_terminal(jp_fetch, "standin")
    assert err.value.code == 403
    assert jp_serverapp.web_app.settings["terminal_manager"].terminals == {}


async def test_chat_client_answers_inside_the_terminal(jp_fetch, jp_ws_fetch, vllm_server):
    # The shared server's config keeps terminal.auto_start_chat at its default (true).
    info = await open_terminal(jp_fetch, vllm_server.name)
    assert info["chat_started"] is True
    ws = await jp_ws_fetch("terminals", "websocket", info["name"])
    try:
        await read_until(ws, "/help for commands", timeout=90)  # the client connected and listed the model
        ws.write_message(json.dumps(["stdin", "What is the capital of France?\r"]))
        screen = await read_until(ws, "Paris", timeout=90)
        assert "error" not in screen.lower()
        ws.write_message(json.dumps(["stdin", "/exit\r"]))
    finally:
        ws.close()
