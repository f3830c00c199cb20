"""The trust boundary, fast: what a config may not override, what a REST user may not ask, what listings hide.

Real Jupyter server (pytest-jupyter, in-process) and real processes (the stand-in backend of
test_server_support); no engine is needed for any of it.
"""

from __future__ import annotations

import json
import os
import stat

import pytest
from jupyter_server.auth import Authorizer
from test_server_support import STANDIN_MODEL
from tornado.httpclient import HTTPClientError

from mixvllm_nb import VLLMServer, create_server
from mixvllm_nb.api import list_servers, stop_server
from mixvllm_nb.errors import ConfigError, ServerStartError
from mixvllm_nb.process import registry

MODEL = "org/some-model"


@pytest.mark.parametrize("extra", [["--api_key", "mine"], ["--api-key=mine"], {"api_key": "mine"}, ["--host", "0.0.0.0"],
                                   ["--uds", "/tmp/x.sock"]])
def test_extra_args_cannot_replace_the_key_or_the_address(extra):
    with pytest.raises(ConfigError) as info:
        VLLMServer(MODEL, port=8123, extra_args=extra).get_launch_command()
    assert "\n" not in str(info.value) and "extra_args" in str(info.value)


def test_a_flag_is_one_flag_whatever_its_spelling():
    server = VLLMServer(MODEL, port=8123, served_model_name="alias", extra_args=["--served_model_name", "other"])
    with pytest.raises(ConfigError, match="--served-model-name is already set"):
        server.get_launch_command()


def test_vllm_starts_with_the_key_guard_which_its_own_python_imports_and_a_users_middleware_beside_it(tmp_path):
    import subprocess
    import sys

    server = VLLMServer(MODEL, port=8126, extra_args=["--middleware", "my.Middleware"])
    command, env = server.get_launch_command(), server.get_launch_env()
    guards = [command[i + 1] for i, arg in enumerate(command) if arg == "--middleware"]
    assert guards == ["mixvllm_key_guard.KeyEverywhere", "my.Middleware"]
    # Importable by its top-level name from the engine's PYTHONPATH alone (-S: no site-packages, so no mixvllm_nb).
    found = subprocess.run([sys.executable, "-S", "-c", "import mixvllm_key_guard as g; print(g.KeyEverywhere.__name__)"],
                           env={"PYTHONPATH": env["PYTHONPATH"]}, cwd=tmp_path, capture_output=True, text=True)
    assert found.stdout.strip() == "KeyEverywhere", found.stderr


def test_env_vars_cannot_override_what_the_backend_pins(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    light = create_server("llamacpp", str(gguf), port=8124, env_vars={"HOST": "0.0.0.0"})
    with pytest.raises(ConfigError, match=r"env_vars.HOST: set by mixvllm_nb for the llamacpp backend"):
        light.get_launch_env()
    vllm = VLLMServer(MODEL, port=8125, env_vars={"VLLM_API_KEY": "mine"})
    with pytest.raises(ConfigError, match="env_vars.VLLM_API_KEY"):
        vllm.get_launch_env()


def _body(name: str, **more) -> str:
    return json.dumps({"backend": "standin-proc", "model": {"name": STANDIN_MODEL}, "server": {"name": name}, **more})


async def _post(jp_fetch, body: str, **params):
    try:
        return await jp_fetch("mixvllm", "api", "servers", method="POST", body=body, params=params)
    except HTTPClientError as err:
        return err.response


@pytest.mark.parametrize("name", ["PYTHONWARNINGS", "LD_PRELOAD", "BROWSER", "VLLM_SERVER_DEV_MODE", "PATH"])
async def test_the_servers_api_refuses_environment_hooks(jp_fetch, name):
    before = {r.name for r in registry.list_records()}
    response = await _post(jp_fetch, _body("hooked", env_vars={name: "1"}))
    assert response.code == 400
    message = json.loads(response.body)["error"]["message"]
    assert f"env_vars.{name}" in message and "c.MixVLLM.allowed_env_vars" in message
    assert {r.name for r in registry.list_records()} == before


async def test_the_servers_api_refuses_sleep_mode_which_opens_vllms_development_routes(jp_fetch):
    response = await _post(jp_fetch, _body("sleepy", inference={"enable_sleep_mode": True}))
    assert response.code == 400
    message = json.loads(response.body)["error"]["message"]
    assert "inference.enable_sleep_mode" in message and "VLLM_SERVER_DEV_MODE" in message


def test_sleep_mode_is_a_flag_and_its_development_mode_and_is_refused_before_launch_without_a_gpu():
    server = VLLMServer(MODEL, port=8128, enable_sleep_mode=True)
    assert "--enable-sleep-mode" in server.get_launch_command()
    assert server.get_launch_env()["VLLM_SERVER_DEV_MODE"] == "1"
    assert "VLLM_SERVER_DEV_MODE" not in VLLMServer(MODEL, port=8129).get_launch_env()
    with pytest.raises(ConfigError, match="enable_sleep_mode: sleep mode needs a CUDA GPU"):
        server.check_resources()  # this machine has no GPU (the GPU path: scripts/gpu_check.py)


async def test_the_servers_api_keeps_logs_under_the_jupyter_root_or_the_state_dir(jp_fetch, tmp_path):
    response = await _post(jp_fetch, _body("elsewhere", log_dir="/etc/cron.d"))
    assert response.code == 400 and "log_dir" in json.loads(response.body)["error"]["message"]
    response = await _post(jp_fetch, _body("template", tools={"chat_template": "/etc/shadow"}))
    message = json.loads(response.body)["error"]["message"]
    assert response.code == 400 and message.startswith("tools.chat_template: '/etc/shadow' is outside"), message


@pytest.mark.parametrize("jupyter_overrides", [{"MixVLLM": {"allowed_env_vars": ["VLLM_SERVER_DEV_MODE"]}}])
async def test_the_jupyter_owner_can_allow_a_variable(jp_fetch):
    response = await _post(jp_fetch, _body("allowed-dev", env_vars={"VLLM_SERVER_DEV_MODE": "1"}))
    try:
        assert response.code == 202, response.body
    finally:
        stop_server("allowed-dev")


class DenyKernels(Authorizer):
    """Allows this extension (even its execute action) but not kernels."""

    def is_authorized(self, handler, user, action, resource):
        return resource != "kernels"


@pytest.mark.parametrize("jupyter_overrides", [{"ServerApp": {"authorizer_class": DenyKernels}}])
async def test_starting_a_server_needs_the_right_to_start_kernels(jp_fetch):
    response = await _post(jp_fetch, _body("no-kernels"))
    assert response.code == 403
    assert "execute on kernels" in json.loads(response.body)["error"]["message"]
    assert registry.get("no-kernels", missing_ok=True) is None


async def test_listings_hide_environment_values_and_logs_are_private(jp_fetch):
    response = await _post(jp_fetch, _body("with-secret", env_vars={"HF_TOKEN": "hf_secret_value"},
                                         extra_args=["--hf-token", "hf_other_secret"]))
    assert response.code == 202, response.body
    try:
        listed = await jp_fetch("mixvllm", "api", "servers")
        one = await jp_fetch("mixvllm", "api", "servers", "with-secret")
        for text in (listed.body.decode(), one.body.decode(), json.dumps(list_servers())):
            assert "hf_secret_value" not in text and "hf_other_secret" not in text
        assert json.loads(one.body)["config"]["env_vars"] == {"HF_TOKEN": "<hidden>"}
        log = registry.get("with-secret").log_path
        assert stat.S_IMODE(os.stat(log).st_mode) == 0o600
    finally:
        stop_server("with-secret")


def test_a_port_squatter_never_receives_the_readiness_probe_or_the_key():
    import socket
    import threading

    from test_server_support import StandInProcess

    # The stand-in binds its port 1.5 s after launch; another program takes the port first.
    server = StandInProcess(STANDIN_MODEL, name="squatted", heartbeat_interval=0.2)
    server.launch()
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", server.port))
    squatter.listen()
    received: list[bytes] = []
    done = threading.Event()

    def accept() -> None:
        squatter.settimeout(0.2)
        while not done.is_set():
            try:
                conn, _ = squatter.accept()
            except OSError:
                continue
            conn.settimeout(1)
            try:
                received.append(conn.recv(65536))
            except OSError:
                pass
            conn.close()

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        with pytest.raises(ServerStartError):  # the stand-in cannot bind: it dies while starting
            server.wait_until_ready(timeout=20)
        done.set()
        thread.join()
        assert received == [], received  # no probe reached the squatter, so no key did either
        assert server.state in ("crashed", "stopped")
    finally:
        squatter.close()
        server.stop()
