"""Sleep and wake: what cannot sleep says so in one line (this CPU machine, llama.cpp, no sleep mode), and a
server that can gets vLLM's calls with its key.

vLLM's sleep mode needs CUDA: here its CPU build answers 404 on /sleep (checked on the session's real server).
A GPU server's side, ``/sleep``, ``/wake_up``, ``/is_sleeping``, is played by a small stand-in (the one thing
mocked: CUDA sleep mode cannot run here), registered as an attached server (its GPU is not this machine's).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psutil
import pytest
from IPython.core.error import UsageError
from test_routes import fetch, token  # noqa: F401  (fixtures)
from test_server_extension import auth, error_of

from mixvllm_nb.api import get_server
from mixvllm_nb.gpu import has_gpu
from mixvllm_nb.process import registry
from mixvllm_nb.process.http import http_post
from mixvllm_nb.process.tree import start_stamp
from mixvllm_nb.sleep import SleepUnavailableError, check_sleep_mode, sleep_server, wake_server

KEY = "sk-sleepy"
ON_CPU = pytest.mark.skipif(has_gpu(), reason="the CPU answers are for a machine without a GPU")


class SleepyEngine:
    """vLLM's dev-mode sleep routes as a GPU server answers them (stand-in: CUDA sleep mode cannot run here)."""

    def __init__(self, *, sleep_mode: bool = True):
        self.calls: list[tuple[str, str, str]] = []  # method, path with query, Authorization
        self.sleeping = False
        engine = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def _answer(self) -> None:
                engine.calls.append((self.command, self.path, self.headers.get("Authorization", "")))
                path, _, query = self.path.partition("?")
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    return self._send(401, {"error": "bad key"})
                if not sleep_mode:
                    return self._send(404, {"detail": "Not Found"})
                if (self.command, path) == ("POST", "/sleep") and query in ("level=1", "level=2"):
                    engine.sleeping = True
                    return self._send(200, None)
                if (self.command, path) == ("POST", "/wake_up"):
                    engine.sleeping = False
                    return self._send(200, None)
                if (self.command, path) == ("GET", "/is_sleeping"):
                    return self._send(200, {"is_sleeping": engine.sleeping})
                if (self.command, path) == ("GET", "/metrics"):  # an idle engine: the counters do not move
                    text = (b'vllm:prompt_tokens_total{model_name="sleepy-model"} 40.0\n'
                            b'vllm:num_requests_running{model_name="sleepy-model"} 0.0\n'
                            b'vllm:num_requests_waiting{model_name="sleepy-model"} 0.0\n')
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(text)))
                    self.end_headers()
                    self.wfile.write(text)
                    return None
                return self._send(404, {"detail": "Not Found"})

            def _send(self, status: int, data: Any) -> None:
                payload = b"" if data is None else json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()


@contextmanager
def registered(name: str, *, backend: str = "vllm", attached: bool = True, **options: Any) -> Iterator[SleepyEngine]:
    engine = SleepyEngine(**options)
    me = psutil.Process()
    registry.save(registry.ServerRecord(
        name=name, backend=backend, model="sleepy-model", served_model_name="sleepy-model", host="127.0.0.1",
        port=engine.http.server_address[1], base_url=engine.url, api_key=KEY, state="ready",
        kind="attached" if attached else "launched", pid=None if attached else me.pid,
        create_time=None if attached else start_stamp(me.pid), config={"model": {"name": "sleepy-model"}, "server": {"name": name}}))
    try:
        yield engine
    finally:
        registry.remove(name)
        engine.http.shutdown()
        engine.http.server_close()


# ---------------------------------------------------------------- what cannot sleep


@ON_CPU
def test_the_real_cpu_server_cannot_sleep_and_says_so_in_one_line(vllm_server, ip):
    expected = (f"{vllm_server.name} ({vllm_server.served_model_name}): sleep mode needs a CUDA GPU; vLLM's CPU "
                "build has no /sleep (it answers 404)")
    for call in (lambda: sleep_server(vllm_server, 1), lambda: wake_server(vllm_server)):
        with pytest.raises(SleepUnavailableError) as info:
            call()
        assert str(info.value) == expected
    for magic, line in (("vllm_sleep", f"{vllm_server.name} --level 2"), ("vllm_wake", vllm_server.name)):
        with pytest.raises(UsageError) as info:
            ip.run_line_magic(magic, line)
        assert str(info.value) == expected
    # What the message says is what the engine does: its own /sleep, asked with its key, is a 404.
    assert http_post(f"{vllm_server.base_url}/sleep?level=1", api_key=vllm_server.api_key)[0] == 404


@ON_CPU
async def test_rest_sleep_on_the_real_cpu_server_is_409(fetch, token, vllm_server):  # noqa: F811
    for action in ("sleep", "wake"):
        response = await fetch(f"mixvllm/api/servers/{vllm_server.name}/{action}", "POST", "", auth(token))
        assert response.code == 409, action
        assert error_of(response)["code"] == "sleep_unavailable"
        assert "sleep mode needs a CUDA GPU" in error_of(response)["message"]


def test_llamacpp_and_a_server_without_sleep_mode_say_what_is_missing(monkeypatch):
    with registered("light-sleepy", backend="llamacpp") as engine:
        with pytest.raises(SleepUnavailableError, match=r"^light-sleepy \(sleepy-model\): sleep mode is vLLM's; "
                           r"the llamacpp engine has no /sleep"):
            check_sleep_mode(get_server("light-sleepy"))
        assert engine.calls == []
    # A launched vLLM server on a GPU (mocked: there is none here) started without inference.enable_sleep_mode.
    monkeypatch.setattr("mixvllm_nb.gpu.has_gpu", lambda: True)
    with registered("gpu-awake", attached=False) as engine:
        with pytest.raises(SleepUnavailableError, match=r"started without sleep mode; restart it with "
                           r"inference.enable_sleep_mode: true \(--enable-sleep-mode\)$"):
            sleep_server(get_server("gpu-awake"))
        assert engine.calls == []


def test_an_attached_server_without_sleep_mode_is_asked_and_its_404_explained():
    with registered("remote-awake", sleep_mode=False) as engine:
        with pytest.raises(SleepUnavailableError, match=r"answers 404 on /sleep: sleep mode needs vLLM on CUDA with "
                           r"--enable-sleep-mode and VLLM_SERVER_DEV_MODE=1$"):
            sleep_server(get_server("remote-awake"))
        assert engine.calls == [("POST", "/sleep?level=1", f"Bearer {KEY}")]


def test_a_bad_level_is_refused_before_anything_is_sent():
    from mixvllm_nb.errors import ConfigError

    with registered("leveled") as engine:
        with pytest.raises(ConfigError, match=r"sleep level 3: use 1"):
            sleep_server(get_server("leveled"), 3)
        assert engine.calls == []


# ---------------------------------------------------------------- a server that can sleep


async def test_rest_sleep_and_wake_call_vllm_with_the_key_and_the_view_says_sleeping(fetch, token):  # noqa: F811
    with registered("gpu-sleepy") as engine:
        assert (await fetch("mixvllm/api/servers/gpu-sleepy/sleep", "POST", "", {})).code == 403
        assert (await fetch("mixvllm/api/servers/gpu-sleepy/sleep?level=3", "POST", "", auth(token))).code == 400
        assert engine.calls == []
        response = await fetch("mixvllm/api/servers/gpu-sleepy/sleep?level=2", "POST", "", auth(token))
        assert response.code == 200, response.body
        view = json.loads(response.body)
        assert (view["name"], view["sleeping"]) == ("gpu-sleepy", True)
        assert view["message"].startswith("gpu-sleepy is asleep (level 2)")
        assert engine.calls == [("POST", "/sleep?level=2", f"Bearer {KEY}"), ("GET", "/is_sleeping", f"Bearer {KEY}")]
        response = await fetch("mixvllm/api/servers/gpu-sleepy/wake", "POST", "", auth(token))
        assert response.code == 200 and json.loads(response.body)["sleeping"] is False
        assert [c[:2] for c in engine.calls[2:]] == [("POST", "/wake_up"), ("GET", "/is_sleeping")]
        assert not engine.sleeping
        # vLLM's own routes stay unreachable through the proxy, with the Jupyter token or without.
        for method, path in (("POST", "sleep?level=1"), ("POST", "wake_up"), ("GET", "is_sleeping")):
            response = await fetch(f"mixvllm/servers/gpu-sleepy/{path}", method, "" if method == "POST" else None,
                                   auth(token))
            assert response.code == 404 and error_of(response)["code"] == "path_not_allowed", path
        assert len(engine.calls) == 4


async def test_a_request_to_a_sleeping_server_wakes_it_first_directly_or_through_a_route(fetch, token):  # noqa: F811
    from mixvllm_nb.process import routes

    chat = json.dumps({"model": "sleepy-model", "messages": [{"role": "user", "content": "hi"}]})
    with registered("gpu-waking") as engine:
        routes.set_route("waking-route", ["gpu-waking"])
        try:
            for url in ("mixvllm/servers/gpu-waking/v1/chat/completions",
                        "mixvllm/servers/waking-route/v1/chat/completions"):
                sleep_server(get_server("gpu-waking"), 1)
                assert registry.get("gpu-waking").sleeping  # every process sees it (the view too)
                engine.calls.clear()
                await fetch(url, "POST", chat, auth(token))  # the stand-in has no chat: its 404 is relayed
                assert [c[:2] for c in engine.calls] == [("POST", "/wake_up"), ("GET", "/is_sleeping"),
                                                         ("POST", "/v1/chat/completions")], url
                assert not engine.sleeping and not registry.get("gpu-waking").sleeping
        finally:
            routes.remove_route("waking-route")


def test_idle_watch_counts_from_the_last_request_seen_and_never_guesses():
    from mixvllm_nb.sleep import IdleWatch

    watch = IdleWatch(minutes=2, now=0.0)
    assert not watch.due(60.0, 10.0, 0)  # first look: its counter is new, so it was active
    assert not watch.due(150.0, 10.0, 0)  # 90 s idle
    assert watch.due(181.0, 10.0, 0)  # 121 s without a new prompt token or a request in flight
    assert not watch.due(200.0, 12.0, 0)  # a request came: idle from now
    assert not watch.due(400.0, 12.0, 1)  # one running: not idle, whatever the counter
    assert not watch.due(700.0, None, None)  # metrics unreadable: counted as activity
    assert watch.idle_for(701.0, None, None) == 0.0


def test_a_server_idle_past_its_minutes_is_put_to_sleep_by_its_heartbeat_work(monkeypatch):
    # Mocked: a CUDA GPU (none here); the engine's sleep routes and /metrics are the stand-in's.
    import time as clock

    from mixvllm_nb import VLLMServer

    monkeypatch.setattr("mixvllm_nb.gpu.has_gpu", lambda: True)
    with registered("gpu-idle", attached=False) as engine:
        port = engine.http.server_address[1]
        server = VLLMServer("sleepy-model", port=port, api_key=KEY, enable_sleep_mode=True,
                            sleep_after_idle_minutes=0.002)  # 0.12 s
        server.name = "gpu-idle"  # the name a launch claims: the registered stand-in's
        server.on_heartbeat()
        assert not engine.sleeping
        clock.sleep(0.3)
        server.on_heartbeat()
        assert engine.sleeping and registry.get("gpu-idle").sleeping
        asleep = len(engine.calls)
        server.on_heartbeat()  # asleep: nothing asked until a request wakes it
        assert len(engine.calls) == asleep


def test_idle_sleep_needs_sleep_mode():
    from mixvllm_nb import VLLMServer
    from mixvllm_nb.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^inference.sleep_after_idle_minutes: needs inference.enable_sleep_mode"):
        VLLMServer("org/model", port=8130, sleep_after_idle_minutes=5).check_resources()


def test_the_sleep_magics_on_a_server_that_can_sleep(ip, capsys):
    with registered("gpu-magic") as engine:
        ip.run_line_magic("vllm_sleep", "gpu-magic --level 2")
        assert engine.sleeping and "gpu-magic is asleep (level 2)" in capsys.readouterr().out
        ip.run_line_magic("vllm_wake", "gpu-magic")
        assert not engine.sleeping and capsys.readouterr().out.strip() == "gpu-magic is awake"
        with pytest.raises(UsageError, match=r"argument --level: invalid choice: 3 \(choose from 1, 2\)"):
            ip.run_line_magic("vllm_sleep", "gpu-magic --level 3")
