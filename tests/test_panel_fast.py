"""The panel as a newcomer sees it, without an engine: widgets built with ipywidgets' dummy comm (no kernel).

What only a browser shows (layout, clicks) is tests/test_panel_browser.py's; what needs a running server,
tests/test_panel.py's. Here: which controls a CPU machine shows, how "not set" reads, the start-up bar of an
ended server, the Logs tab's text and the chat's words.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import ipywidgets as widgets
import pytest

from mixvllm_nb import client as client_module
from mixvllm_nb.display import answer_summary
from mixvllm_nb.panel import chat as chat_module
from mixvllm_nb.panel.chat import ChatSection, accepts_images
from mixvllm_nb.panel.errors import ErrorBox
from mixvllm_nb.panel.launch import LaunchSection
from mixvllm_nb.panel.monitor import LogsSection
from mixvllm_nb.panel.sampling import SamplingSection
from mixvllm_nb.process import logs

DATA = Path(__file__).parent / "data"
ESC = "\x1b"


def _tree(widget: widgets.Widget) -> list[widgets.Widget]:
    """Every widget shown under ``widget`` (what the frontend would render)."""
    found = [widget]
    for child in getattr(widget, "children", ()):
        found += _tree(child)
    return found


def _launch(on_cpu: bool) -> LaunchSection:
    return LaunchSection(ErrorBox(), lambda _server: None, lambda: None, on_cpu=on_cpu)


# -- launch settings -----------------------------------------------------------------------------


def test_a_cpu_machine_is_not_shown_gpu_only_controls():
    cpu, gpu = _launch(on_cpu=True), _launch(on_cpu=False)
    shown_cpu, shown_gpu = _tree(cpu), _tree(gpu)
    for key in ("gpu_memory_utilization", "tensor_parallel_size"):
        assert cpu.inputs[key] not in shown_cpu
        assert gpu.inputs[key] in shown_gpu
    assert cpu.inputs["cpu_kv_cache_gib"] in shown_cpu and gpu.inputs["cpu_kv_cache_gib"] not in shown_gpu
    assert cpu.overrides() == {}  # a hidden control overrides nothing
    assert cpu.build_config().inference.tensor_parallel_size == 1


def test_launch_starts_with_the_selected_servers_sampling_so_it_reuses_what_the_magic_started():
    from mixvllm_nb.config import ServeConfig, load_server_config

    launch = _launch(on_cpu=True)
    assert launch.build_config().generation_defaults.temperature is None  # nothing selected: the model's own
    magic = load_server_config(None, {"generation_defaults.temperature": 0.0, "generation_defaults.max_tokens": 64})
    launch.follow_sampling(SimpleNamespace(name="from-magic", attached=False, config=magic))
    built = launch.build_config()
    assert (built.generation_defaults.temperature, built.generation_defaults.max_tokens) == (0.0, 64)
    assert built.identity() == magic.identity()  # so Launch reuses it instead of loading a second copy
    assert "from-magic" in launch.sampling_note.value and "temperature 0.0" in launch.sampling_note.value
    launch.follow_sampling(SimpleNamespace(name="remote", attached=True, config=ServeConfig()))
    assert launch.build_config().generation_defaults.temperature is None and launch.sampling_note.value == ""


def test_sleep_and_wake_show_on_a_gpu_machine_only_and_say_in_one_line_what_is_missing(monkeypatch):
    from mixvllm_nb import VLLMServer

    assert _launch(on_cpu=True).sleep_button.layout.display == "none"
    server = VLLMServer("org/some-model", port=8127)
    # A GPU machine's panel (on_cpu=False) on this machine, which has none: sleep mode's check answers.
    launch = LaunchSection(ErrorBox(), lambda _server: None, lambda: server, on_cpu=False)
    assert launch.sleep_button.layout.display is None and launch.wake_button.layout.display is None
    launch.sleep_button.click()
    launch.wait(10)
    deadline = __import__("time").monotonic() + 10
    while "needs a CUDA GPU" not in launch.outcome_text and __import__("time").monotonic() < deadline:
        __import__("time").sleep(0.05)
    assert "sleep mode needs a CUDA GPU" in launch.outcome_text and "\n" not in launch.outcome_text


def test_max_model_len_not_set_reads_as_the_models_default_not_zero():
    launch = _launch(on_cpu=True)
    box = launch.inputs["max_model_len"]
    assert box.get_state(["value"]) == {"value": ""}  # what the browser shows: nothing, not "0"
    assert "model" in box.placeholder
    box.set_state({"value": "4096"})  # the user types, as the browser sends it
    assert launch.overrides() == {"inference.max_model_len": 4096}
    assert launch.build_config().inference.max_model_len == 4096
    box.set_state({"value": ""})
    assert launch.overrides() == {} and launch.build_config().inference.max_model_len is None
    launch.show_config(launch.build_config())  # a config without it shows an empty box again
    assert box.get_state(["value"]) == {"value": ""}
    box.set_state({"value": "lots"})
    assert "max_model_len" in launch.estimate.value and "#cf222e" in launch.estimate.value  # the config says why


# -- start-up progress ---------------------------------------------------------------------------


def _server_with_log(tmp_path: Path, text: str) -> SimpleNamespace:
    log = tmp_path / "server.log"
    log.write_text(text)
    return SimpleNamespace(name="srv", log_path=str(log), model="", engine_label="vLLM")


def test_the_start_up_bar_follows_the_log_and_an_ended_server_has_no_full_bar(tmp_path):
    eager = (DATA / "vllm_cpu_startup.log").read_text()
    loading = eager[: eager.index("Loading weights took")]
    server = _server_with_log(tmp_path, loading)
    launch = _launch(on_cpu=True)
    launch.show_progress(server, "starting")
    assert launch.progress.value == logs.phase_progress("loading weights") and 0 < launch.progress.value < 1
    assert "loading weights" in launch.phase.value
    launch.show_progress(server, "ready")
    assert launch.progress.value == 1.0 and launch.progress.layout.visibility == "visible"
    for state in ("stopped", "exited", "crashed"):
        launch.show_progress(server, state)
        assert launch.progress.value == 0.0 and launch.progress.layout.visibility == "hidden"
        assert f"srv: {state}" in launch.phase.value


# -- logs tab ------------------------------------------------------------------------------------

# Lines as vLLM's ColoredFormatter (vllm/logging_utils/formatter.py) and uvicorn write them when colour is
# forced (FORCE_COLOR, VLLM_LOGGING_COLOR=1): cyan process prefix, grey time and file, green level.
COLOURED = (
    "\x1b[0;36m(EngineCore pid=3027)\x1b[0;0m \x1b[32mINFO\x1b[0m \x1b[90m11-24 22:17:09\x1b[0m "
    "\x1b[90m[core.py:133]\x1b[0m Initializing a V1 LLM engine (v0.32.0)\n"
    "\x1b[32mINFO\x1b[0m:     127.0.0.1:48106 - \"GET /health HTTP/1.1\" \x1b[32m200 OK\x1b[0m\n"
)


def test_the_logs_tab_shows_no_colour_codes(tmp_path):
    server = _server_with_log(tmp_path, COLOURED)
    section = LogsSection()
    section.show(server, "ready")
    assert ESC not in section.text.value and "[0;36m" not in section.text.value
    assert "(EngineCore pid=3027) INFO 11-24 22:17:09 [core.py:133] Initializing a V1 LLM engine" in section.text.value
    assert ESC not in logs.tail(server.log_path)


def test_after_a_stop_the_logs_tab_folds_the_shutdown_noise(tmp_path):
    """The real end of a vLLM CPU server stopped by the suite: [shutdown] steps, then nanobind's leak report."""
    shutdown = (DATA / "vllm_cpu_shutdown.log").read_text()
    server = _server_with_log(tmp_path, COLOURED + shutdown)
    section = LogsSection()
    section.show(server, "stopped")
    shown = section.text.value
    assert "nanobind" not in shown and "[shutdown]" not in shown
    assert "lines of shutdown messages hidden" in shown
    assert "GET /health HTTP/1.1" in shown  # what came before the stop is still there
    section.show(server, "crashed")  # a server that ended on its own: every line may matter
    assert "nanobind: leaked" in section.text.value


# -- chat ----------------------------------------------------------------------------------------


def _model_folder(tmp_path: Path, config: str) -> str:
    folder = tmp_path / config.removesuffix(".json")
    folder.mkdir()
    shutil.copy(DATA / "model_configs" / config, folder / "config.json")
    return str(folder)


def test_attach_image_shows_only_for_a_vision_model(tmp_path):
    vision, text = _model_folder(tmp_path, "qwen2.5-vl-3b.json"), _model_folder(tmp_path, "smollm2-135m-instruct.json")
    assert accepts_images(vision) and not accepts_images(text)
    assert not accepts_images(str(tmp_path / "SmolLM2.F16.gguf")) and not accepts_images("remote-name")
    chat = ChatSection(ErrorBox(), SamplingSection(), lambda: None)
    assert chat.upload.layout.display == "none"  # before any server is selected
    chat.follow(_server(vision))
    assert chat.upload.layout.display != "none"
    chat.follow(_server(text))
    assert chat.upload.layout.display == "none"
    assert chat.model.options == ("text-model",) and chat.models_button.layout.display == "none"  # no LoRA: no list


def _server(model: str) -> SimpleNamespace:
    from mixvllm_nb.config import ServeConfig

    return SimpleNamespace(model=model, served_model_name="text-model", attached=False, config=ServeConfig())


def test_the_chat_says_what_an_answer_took_in_tokens(monkeypatch):
    """The engine is replaced by a stream of three pieces with the usage vLLM reports (include_usage)."""

    def stream_chat(_client, _model, _messages, *, stats=None, **_params):
        yield from ("The", " capital", " is Paris.")
        stats.usage = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}

    monkeypatch.setattr(client_module, "stream_chat", stream_chat)
    monkeypatch.setattr(chat_module, "openai_client", lambda *_args: None)
    chat = ChatSection(ErrorBox(), SamplingSection(), lambda: None)
    server = SimpleNamespace(base_url="http://127.0.0.1:1", api_key="k", served_model_name="m", backend_name="vllm")
    chat._stream(server, "What is the capital of France?", [], {})
    assert chat.last_answer == "The capital is Paris."
    assert "3 tokens in " in chat.status.value and "tokens a second" in chat.status.value
    assert "pieces" not in chat.status.value and "screen updates" not in chat.status.value


@pytest.mark.parametrize(("tokens", "pieces", "seconds", "note", "expected"), [
    (27, 27, 2.0, "", "27 tokens in 2.0 s, 13.5 tokens a second"),
    (None, 12, 1.5, " (stopped)", "about 12 tokens in 1.5 s, 8.0 tokens a second (stopped)"),
    (None, 0, 0.4, "", "no answer after 0.4 s"),
])
def test_answer_summary_wording(tokens, pieces, seconds, note, expected):
    assert answer_summary(tokens, pieces, seconds, note) == expected



def test_the_routes_tab_creates_lists_and_removes_a_route_over_running_servers():
    from test_server_support import registered_upstream

    from mixvllm_nb.panel.routes import RoutesSection
    from mixvllm_nb.process import routes

    errors = ErrorBox()
    with registered_upstream("tab-a") as _, registered_upstream("tab-b") as _:
        section = RoutesSection(errors)
        assert {"tab-a", "tab-b"} <= set(section.members.options)
        section.create_button.click()
        assert "type a route name first" in errors.message  # shown in red, nothing made
        section.name.value = "tab-route"
        section.members.value = ("tab-a", "tab-b")
        section.create_button.click()
        assert routes.list_routes()["tab-route"] == ["tab-a", "tab-b"]
        assert "tab-route" in section.listing.value and "/mixvllm/servers/tab-route/v1" in section.listing.value
        section.remove_choice.value = "tab-route"
        section.remove_button.click()
        assert "tab-route" not in routes.list_routes() and "tab-route" not in section.listing.value
