"""The control panel's widget state without a browser (ipywidgets' dummy comm), against real servers.

The launch flow launches the shared server's config through the panel, so the manager reuses it
(no second model load); the browser test does the one real launch. Chat, sliders and "copy as
code" talk to the shared vLLM server.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from device_expectations import GPU_PLAN_TOLERANCE, on_gpu
from kernel_helpers import Kernel

from mixvllm_nb.errors import MixVLLMError
from mixvllm_nb.panel import NEEDS_FRONTEND, ControlPanel, Throttle, panel
from mixvllm_nb.panel.monitor import server_state
from mixvllm_nb.process import logs, registry
from mixvllm_nb.status import scrape

VENV_BIN = Path(sys.executable).parent


def _wait(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def _tokens_generated(server) -> float:
    return scrape(server).generation_tokens_total


@pytest.fixture
def shared_panel(vllm_server):
    p = ControlPanel("shared", interval=0.5)
    yield p
    p.close()


# -- the throttle --------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_throttle_limits_the_rate_and_always_shows_the_last_value():
    clock, shown = FakeClock(), []
    throttle = Throttle(shown.append, 0.1, clock=clock, use_timer=False)
    for i in range(100):  # one second of a 100-pieces-per-second stream
        throttle.update(i)
        clock.now += 0.01
    assert shown[0] == 0  # the first piece is shown at once
    assert 9 <= len(shown) <= 11
    assert all(b > a for a, b in zip(shown, shown[1:], strict=False))
    assert shown[-1] != 99  # the newest value is still pending...
    throttle.flush()
    assert shown[-1] == 99  # ...and the flush shows it whole
    assert throttle.calls == len(shown)
    throttle.flush()  # nothing pending: no extra update
    assert throttle.calls == len(shown)
    throttle.flush("final")  # an explicit final value is shown whatever the rate
    assert shown[-1] == "final"


def test_throttle_timer_delivers_a_pending_value_without_a_new_update():
    # The clock is stood in for, so "within the interval" never depends on how busy the machine is. Only the
    # timer waits in real time: 1 s, so that a stalled test thread cannot see it fire early, and the test
    # waits for its result instead of sleeping a guess.
    clock, shown = FakeClock(), []
    throttle = Throttle(shown.append, 1.0, clock=clock)
    throttle.update(1)
    throttle.update(2)
    throttle.update(3)
    assert shown == [1]
    assert _wait(lambda: shown == [1, 3], timeout=30), shown  # the timer showed the newest pending value
    clock.now += 1.0
    throttle.update(4)  # the interval is over: shown at once
    assert shown == [1, 3, 4]
    with pytest.raises(ValueError, match="interval"):
        Throttle(shown.append, 0)


def test_throttle_cancel_drops_the_pending_value():
    clock, shown = FakeClock(), []
    throttle = Throttle(shown.append, 1.0, clock=clock)
    throttle.update(1)
    throttle.update(2)  # pending, its timer started
    throttle.cancel()
    throttle.flush()  # nothing pending any more: nothing to show
    assert shown == [1] and throttle.calls == 1
    time.sleep(1.5)  # past the interval: a timer that survived the cancel would have fired (a timer is never early)
    assert shown == [1]
    clock.now += 1.0
    throttle.update(5)
    assert shown == [1, 5]


# -- outside a notebook ----------------------------------------------------------------------------


def test_panel_outside_a_notebook_says_it_needs_a_frontend(capsys):
    assert panel() is None
    assert "needs a notebook frontend" in capsys.readouterr().out
    # A terminal IPython (no ZMQ kernel behind it) gets the same message.
    result = subprocess.run(
        [str(VENV_BIN / "ipython"), "--no-banner", "--quick", "--colors=nocolor", "-c",
         "from mixvllm_nb.panel import panel; print('returned', repr(panel()))"],
        capture_output=True, text=True, timeout=120, env=os.environ.copy(),
    )
    assert result.returncode == 0, result.stderr
    assert NEEDS_FRONTEND in result.stdout
    assert "returned None" in result.stdout


# -- launch tab ------------------------------------------------------------------------------------


def launch_fields(p: ControlPanel) -> dict:
    """The Launch tab's overrides from its widgets; its sampling follows the selected server (checked here too)."""
    overrides = p.launch.overrides()
    sampling = {k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith("generation_defaults.")}
    if p.server is not None:
        assert sampling == p.server.config.generation_defaults.model_dump(exclude_none=True)
    return {k: v for k, v in overrides.items() if not k.startswith("generation_defaults.")}


def test_estimate_follows_the_settings(vllm_server):
    p = ControlPanel()
    try:
        def tokens() -> int:
            match = re.search(r"KV cache <b>([\d,]+) tokens", p.launch.estimate.value)
            assert match, p.launch.estimate.value
            return int(match.group(1).replace(",", ""))

        assert "weights" in p.launch.estimate.value and "max concurrency" in p.launch.estimate.value
        if on_gpu():  # the KV cache is what the GPU share leaves after the weights; the default dtype is the model's
            default = tokens()
            p.launch.inputs["gpu_memory_utilization"].value = 0.5
            less = tokens()
            p.launch.inputs["dtype"].value = "float32"  # twice the bytes per token (and per weight)
            assert tokens() < less < default
            assert launch_fields(p) == {"inference.gpu_memory_utilization": 0.5, "inference.dtype": "float32"}
        else:  # the CPU build's KV cache is exactly cpu_kv_cache_gib
            one_gib = tokens()
            p.launch.inputs["cpu_kv_cache_gib"].value = 2
            assert tokens() == 2 * one_gib
            p.launch.inputs["dtype"].value = "bfloat16"  # half the bytes per token
            assert tokens() == 4 * one_gib
            assert launch_fields(p) == {"inference.cpu_kv_cache_gib": 2, "inference.dtype": "bfloat16"}
        p.launch.inputs["name"].value = "bad name!"
        assert "server.name" in p.launch.estimate.value  # the estimate says why it cannot plan
    finally:
        p.close()


def test_errors_land_in_the_panel_in_red(tmp_path):
    p = ControlPanel()
    try:
        p.selector.value = None  # no server selected (the shared one may be running)
        assert p.server is None and _wait(lambda: not p.monitor.running, timeout=30)
        assert "No server selected" in p.monitor.summary.value
        p.launch.inputs["name"].value = "bad name!"
        p.launch.launch_button.click()
        assert "ConfigError" in p.errors.message and "server.name" in p.errors.message
        assert "#cf222e" in p.errors.value
        assert not p.launch.busy  # nothing was started

        p.launch.inputs["name"].value = ""
        p.launch.yaml_path.value = str(tmp_path / "missing.yaml")
        p.launch.load_button.click()
        assert "config file not found" in p.errors.message

        (tmp_path / "bad.yaml").write_text("inference:\n  dtype: float8\n")
        p.launch.yaml_path.value = str(tmp_path / "bad.yaml")
        p.launch.launch_button.click()
        assert "inference.dtype" in p.errors.message

        p.chat.message.value = "hello"
        p.chat.send_button.click()
        assert "no server selected" in p.errors.message
        p.chat.code_button.click()
        assert "no server selected" in p.errors.message
        p.launch.stop_button.click()
        assert "nothing to stop" in p.errors.message

        p.launch.yaml_path.value = ""
        p.launch.inputs["model"].value = str(tmp_path / "no-such-model")
        p.launch.launch_button.click()  # the folder check runs in the launch thread
        p.launch.wait(60)
        assert "is not an existing folder" in p.errors.message
        assert "Launch failed" in p.launch.outcome_text
    finally:
        p.close()


def test_launch_flow_reuses_the_running_server(vllm_server, tmp_path):
    """Launch the shared server's config from a YAML file: Reused, ready, estimate vs vLLM's figures."""
    defaults = vllm_server.config.generation_defaults.as_request_params()
    config_file = tmp_path / "shared.yaml"
    config_file.write_text(yaml.safe_dump({"server": {"name": "shared"}, "generation_defaults": defaults}))
    p = ControlPanel(interval=0.5)
    try:
        p.launch.yaml_path.value = str(config_file)
        p.launch.load_button.click()
        assert p.launch.inputs["name"].value == "shared"
        assert p.errors.message == ""
        planned = re.search(r"KV cache <b>([\d,]+) tokens", p.launch.estimate.value)
        assert planned, p.launch.estimate.value

        p.launch.launch_button.click()
        p.launch.wait(300)
        assert p.errors.message == ""
        assert "Reused <b>shared</b>: ready" in p.launch.outcome_text
        assert p.server is vllm_server  # the running object itself, not a second server
        assert p.selector.value == "shared"

        # After launch: what vLLM reported, next to the planner's estimate.
        reported = logs.kv_cache_report(logs.read_text(vllm_server.log_path))
        assert reported is not None and str(reported) in p.launch.reported.value
        planned_tokens = int(planned.group(1).replace(",", ""))
        if on_gpu():  # the GPU overhead is an estimate
            assert abs(planned_tokens - reported.tokens) <= GPU_PLAN_TOLERANCE * reported.tokens
        else:
            assert planned_tokens == reported.tokens

        # Sliders start at the server's generation defaults; only those are sent.
        for key, value in defaults.items():
            assert p.sampling.sliders[key].value == value
        assert p.sampling.params() == defaults

        # The monitor thread fills in state, memory, KV cache usage and load; the logs tab follows.
        assert _wait(lambda: p.monitor.last.get("kv_usage") is not None, timeout=60), p.monitor.last
        assert "ready" in p.state.value
        assert p.monitor.last["rss"] > 100 * 2**20  # vLLM's three processes, summed
        assert "tokens/s" in p.monitor.load.value and "running" in p.monitor.load.value
        assert p.launch.progress.value == 1.0
        # The log's current end (earlier tests' requests may have pushed the start-up lines out).
        recent = html.escape(logs.tail(vllm_server.log_path, 3).splitlines()[0])
        assert _wait(lambda: recent in p.logs.text.value, timeout=30), p.logs.text.value[-500:]
    finally:
        p.close()
    assert not p.monitor.running  # close() stops the refresh thread


@pytest.mark.vllm  # converts or starts a real model
def test_a_failed_launch_shows_the_cause_and_the_log_tail_in_red(tmp_path):
    """A real launch that vLLM refuses (an unknown flag): red error with the log's tail, nothing left."""
    config_file = tmp_path / "broken.yaml"
    config_file.write_text(yaml.safe_dump({"server": {"name": "panel-broken"},
                                           "extra_args": ["--no-such-flag-for-the-panel-test"]}))
    p = ControlPanel(interval=0.5)
    try:
        p.launch.yaml_path.value = str(config_file)
        p.launch.launch_button.click()  # a path typed but not loaded is loaded first
        assert p.launch.inputs["name"].value == "panel-broken"
        p.launch.wait(300)
        assert "ServerStartError" in p.errors.message and "panel-broken" in p.errors.message
        assert "no-such-flag-for-the-panel-test" in p.errors.value  # the log tail, shown under it
        assert "failed to start" in p.launch.outcome_text and p.launch.progress.bar_style == "danger"
        assert not p.launch.launch_button.disabled  # the user can fix the config and try again
        assert registry.get("panel-broken", missing_ok=True) is None
    finally:
        p.close()


# -- sampling and chat -----------------------------------------------------------------------------


def test_sliders_feed_the_chat_request(shared_panel, vllm_server):
    p = shared_panel
    p.sampling.sliders["max_tokens"].value = 5
    assert p.sampling.params()["max_tokens"] == 5
    assert "max_tokens=5" in p.sampling.summary.value
    updates: list[float] = []
    p.chat.transcript.observe(lambda _change: updates.append(time.monotonic()), names="value")

    before = _tokens_generated(vllm_server)
    started = time.monotonic()
    p.chat.message.value = "Count from 1 to 50, separated by commas."
    p.chat.send_button.click()
    p.chat.wait(120)
    elapsed = time.monotonic() - started
    assert p.errors.message == ""
    short = p.chat.last_answer
    assert short
    assert _wait(lambda: _tokens_generated(vllm_server) > before, timeout=10)
    assert 1 <= _tokens_generated(vllm_server) - before <= 5
    assert p.chat.conversation.messages[-1] == {"role": "assistant", "content": short}
    assert short in p.chat.transcript.value
    # Throttled: at most ~10 screen updates per second (+ the first piece and the final flush).
    assert len(updates) <= elapsed * 10 + 3

    p.sampling.reset_button.click()
    assert p.sampling.sliders["max_tokens"].value == vllm_server.config.generation_defaults.max_tokens
    p.chat.clear_button.click()
    assert p.chat.conversation.messages == []
    before = _tokens_generated(vllm_server)
    p.chat.send("Count from 1 to 50, separated by commas.")
    p.chat.wait(120)
    assert _wait(lambda: _tokens_generated(vllm_server) - before > 5, timeout=10)
    assert len(p.chat.last_answer) > len(short)


def test_stop_generation_keeps_what_arrived(shared_panel, vllm_server):
    p = shared_panel
    p.sampling.sliders["max_tokens"].value = 400
    p.chat.send("Write a long story about a dragon.")
    assert _wait(lambda: p.chat.pieces_received >= 2, timeout=60)
    assert p.chat.streaming
    assert not p.chat.stop_button.disabled
    time.sleep(0.3)
    p.chat.stop_button.click()
    p.chat.wait(60)
    assert "(stopped)" in p.chat.status.value
    answer = p.chat.conversation.messages[-1]
    assert answer["role"] == "assistant" and answer["content"] == p.chat.last_answer
    assert 0 < len(p.chat.last_answer) and p.chat.stop_button.disabled and not p.chat.send_button.disabled
    # The request was aborted on the server: nothing keeps running.
    assert _wait(lambda: scrape(vllm_server).num_requests_running == 0, timeout=30)


def test_copy_as_code_runs_without_the_key_in_it(shared_panel, vllm_server):
    p = shared_panel
    p.chat.system.value = "You are a concise assistant."
    p.chat.send("What is the capital of France?")
    p.chat.wait(120)
    assert "Paris" in p.chat.last_answer
    p.chat.message.value = "And what is the capital of Italy?"
    p.chat.code_button.click()
    code = p.chat.code.value
    assert vllm_server.api_key not in code
    source = p.chat.show_code()
    assert f"{vllm_server.base_url}/v1" in source
    assert repr(vllm_server.served_model_name) in source
    assert 'os.environ["OPENAI_API_KEY"]' in source
    assert "You are a concise assistant." in source and "And what is the capital of Italy?" in source
    assert "temperature=0.0" in source and "max_tokens=" in source
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OPENAI_API_KEY": vllm_server.api_key})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_an_image_reaches_the_request_and_a_text_model_refuses_it_in_red(shared_panel):
    """The attach button's images travel in the request; SmolLM2 is text-only, so vLLM says no."""
    p = shared_panel
    png = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")
    p.chat.upload.value = ({"name": "dot.png", "type": "image/png", "size": len(png),
                            "content": memoryview(png), "last_modified": datetime.now(UTC)},)
    p.chat.send("What is in this image?")
    p.chat.wait(120)
    # vLLM answers 400 "... is not a multimodal model": the image part reached it.
    assert "BadRequestError" in p.errors.message and "multimodal" in p.errors.message
    assert p.chat.upload.value == ()  # the attachment went with that message
    assert p.chat.conversation.messages == []  # no answer came back: the question is not kept either
    assert not p.chat.send_button.disabled


def test_terminal_button_says_why_when_no_jupyter_server_answers(shared_panel, monkeypatch):
    """The browser test opens a real terminal; here the Jupyter server named in the env is not there."""
    import socket

    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("JUPYTER_SERVER_URL", f"http://127.0.0.1:{port}/")
    monkeypatch.setenv("JUPYTER_TOKEN", "not-a-real-token")
    shared_panel.chat.terminal_button.click()
    assert shared_panel.errors.message.startswith("MixVLLMError: chat in a terminal:"), shared_panel.errors.message
    assert "open it" not in shared_panel.chat.status.value


# -- monitor ----------------------------------------------------------------------------------------


def test_monitor_follows_an_attached_server_and_stops_with_it(vllm_server):
    from mixvllm_nb.api import attach, stop_server

    attached = attach(vllm_server.base_url, api_key=vllm_server.api_key, name="shared-attached")
    p = ControlPanel(interval=0.3)
    try:
        assert {"shared", "shared-attached"} <= set(p.selector.options)
        p.selector.value = "shared-attached"
        assert p.server.name == "shared-attached" and p.monitor.running
        assert _wait(lambda: p.monitor.last.get("kv_usage") is not None, timeout=30)
        assert "remote server" in p.monitor.memory.children[0].children[2].value
        assert p.sampling.params() == {}  # an attached server has no known defaults: the server decides
        stop_server(attached.name)  # detaches (never stops) an attached server
        assert _wait(lambda: not p.monitor.running, timeout=30)
        assert server_state(p.server) == "stopped" and "stopped" in p.state.value
        assert server_state(vllm_server) == "ready"
    finally:
        p.close()
        if registry.get("shared-attached", missing_ok=True) is not None:
            stop_server("shared-attached")


def test_monitor_pauses_while_no_view_shows_the_panel(shared_panel):
    """The frontend counts views (_view_count); a cleared output must not cost scrapes every second."""
    p = shared_panel
    assert _wait(lambda: p.monitor.ticks >= 2, timeout=30)
    p._view_count = 1  # as the frontend reports when it renders the panel
    p._view_count = 0  # ... and when the output is cleared or the cell re-run
    assert p.hidden()
    time.sleep(2 * p.monitor.interval)  # let a tick in flight finish
    paused_at = p.monitor.ticks
    time.sleep(4 * p.monitor.interval)
    assert p.monitor.ticks == paused_at and p.monitor.running
    p._view_count = 1  # shown again (e.g. the notebook reopened): it resumes
    assert _wait(lambda: p.monitor.ticks > paused_at, timeout=30)


def test_selecting_an_unknown_server_is_an_error(vllm_server):
    with pytest.raises(MixVLLMError, match="no running server named 'nope'"):
        ControlPanel("nope")


# -- in a real kernel --------------------------------------------------------------------------------


def test_panel_in_a_kernel_reports_callback_errors(vllm_server):
    kernel = Kernel()
    try:
        kernel.run("%load_ext mixvllm_nb")
        cell = kernel.run("p = %vllm_panel shared\ntype(p).__name__, p.server.name")
        assert cell.error is None, cell.error
        assert cell.result == "('ControlPanel', 'shared')"
        # A project error: red in the panel, and one line (UsageError) for IPython.
        cell = kernel.run("p.launch.inputs['name'].value = 'bad name!'\np.launch.launch_button.click()\n"
                          "print('panel says:', p.errors.message)")
        assert "panel says: ConfigError" in cell.stdout
        assert "UsageError" in cell.stderr and "server.name" in cell.stderr
        # Anything else: red in the panel, and the whole traceback through showtraceback.
        cell = kernel.run("p.sampling.params = lambda: 1 / 0\np.chat.message.value = 'hi'\n"
                          "p.chat.send_button.click()\nprint('panel says:', p.errors.message)")
        assert "panel says: ZeroDivisionError" in cell.stdout
        traceback_messages = [m for m in cell.messages if m["msg_type"] == "error"]
        assert traceback_messages and traceback_messages[0]["content"]["ename"] == "ZeroDivisionError"
        cell = kernel.run("p.close()\np.monitor.running")
        assert cell.result == "False"
    finally:
        kernel.shutdown()
