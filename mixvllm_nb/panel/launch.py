"""The launch tab: settings (or a YAML file), the planner's estimate, Launch/Stop and start-up progress."""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from ..config import ServeConfig, load_server_config
from ..errors import MixVLLMError
from ..process import logs
from .errors import ErrorBox, guarded, in_notebook_kernel, start_thread
from .fields import STYLE, WIDE, field_widget
from .monitor import TERMINAL_STATES, reported_summary

GREY = "color:#57606a"
# Settings that only mean something on one kind of machine: a CPU machine is not shown the GPU ones.
GPU_ONLY = ("gpu_memory_utilization", "tensor_parallel_size")
CPU_ONLY = ("cpu_kv_cache_gib",)

# Widget name -> dotted config path; the widgets show a config, and only what differs is overridden.
FIELDS = {
    "model": "model.name",
    "trust_remote_code": "model.trust_remote_code",
    "name": "server.name",
    "dtype": "inference.dtype",
    "quantization": "inference.quantization",
    "max_model_len": "inference.max_model_len",
    "gpu_memory_utilization": "inference.gpu_memory_utilization",
    "tensor_parallel_size": "inference.tensor_parallel_size",
    "cpu_kv_cache_gib": "inference.cpu_kv_cache_gib",
    "cluster": "cluster.address",
}


def _get(config: ServeConfig, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def plan_summary(config: ServeConfig) -> str:
    """Return the planner's estimate for ``config`` as one HTML paragraph (or why there is none)."""
    try:
        from ..plan import plan_for_config
    except ImportError as exc:  # the planner is optional for the panel
        return f"<span style='{GREY}'>No estimate: the planner is not available ({html.escape(str(exc))}).</span>"
    try:
        p = plan_for_config(config)
    except (ValueError, OSError, MixVLLMError) as exc:  # e.g. a hub model not in the local cache
        return f"<span style='{GREY}'>No estimate: {html.escape(str(exc))}</span>"
    except Exception as exc:  # a config the planner does not understand must not block launching
        return f"<span style='{GREY}'>No estimate ({type(exc).__name__}: {html.escape(str(exc))})</span>"
    gib = 1024**3
    parts = [f"weights <b>{p.weights_bytes / gib:.2f} GiB</b>"]
    if p.kv_cache_tokens is not None:
        parts.append(f"KV cache <b>{p.kv_cache_tokens:,} tokens</b>")
    if p.max_concurrency is not None:
        parts.append(f"max concurrency <b>{p.max_concurrency:.2f}x</b> at {p.max_model_len:,} tokens")
    verdict = {True: "<span style='color:#1a7f37'>fits</span>",
               False: "<span style='color:#cf222e'>does not fit</span>"}.get(p.fits, "")
    advice = "".join(f"<li>{html.escape(a)}</li>" for a in p.advice)
    return (f"<div class='mixvllm-estimate'>Estimate ({html.escape(p.device)}, {html.escape(p.dtype)}): "
            f"{' · '.join(parts)} {verdict}{f'<ul>{advice}</ul>' if advice else ''}</div>")


class LaunchSection(widgets.VBox):
    """Launch settings with a live memory estimate, Launch and Stop, and the start-up progress."""

    def __init__(self, errors: ErrorBox, on_server: Callable[[Any], None],
                 get_server: Callable[[], Any], *, on_cpu: bool) -> None:
        self.errors = errors
        self.on_server = on_server
        self.get_server = get_server
        self.on_cpu = on_cpu
        self.outcome_text = ""
        self._thread: threading.Thread | None = None
        self._loaded_yaml = ""
        self._quiet = False
        self._stopping = ""  # the name of a server the user is stopping
        self._target: Any = None  # the server the current launch started or reused
        self._reported_for: Any = None  # the server whose vLLM figures are shown
        # The selected server's sampling defaults: Launch starts with them, as the magic that started it did.
        self.sampling_defaults: dict[str, Any] = {}
        guard = guarded(errors)
        # Each input is built from its config field: type, choices, bounds and help are declared once there.
        labels = {"trust_remote_code": "trust remote code", "name": "server name",
                  "cpu_kv_cache_gib": "CPU KV cache GiB", "cluster": "Ray cluster"}
        self.inputs: dict[str, widgets.ValueWidget] = {
            key: field_widget(dotted, labels.get(key, key),
                              default_label="default (float32 on CPU)" if on_cpu else "default (auto)")
            for key, dotted in FIELDS.items()
        }
        for widget in self.inputs.values():
            widget.observe(guard(lambda _change: self.update_estimate()), names="value")
        self.yaml_path = widgets.Text(description="YAML config", placeholder="path/to/server.yaml",
                                      style=STYLE, layout=WIDE)
        self.load_button = widgets.Button(description="Load YAML")
        self.launch_button = widgets.Button(description="Launch", button_style="success")
        self.stop_button = widgets.Button(description="Stop", button_style="danger")
        self.load_button.on_click(guard(lambda _: self.load_yaml()))
        self.launch_button.on_click(guard(lambda _: self.launch()))
        self.stop_button.on_click(guard(lambda _: self.stop()))
        # vLLM's sleep mode frees GPU memory without a restart; a CPU build has none, so a CPU machine shows no buttons.
        shown_on_gpu = widgets.Layout(display="none" if on_cpu else None)
        self.sleep_button = widgets.Button(description="Sleep", layout=shown_on_gpu)
        self.wake_button = widgets.Button(description="Wake", layout=widgets.Layout(display=shown_on_gpu.display))
        self.sleep_button.on_click(guard(lambda _: self.sleep_or_wake("sleep")))
        self.wake_button.on_click(guard(lambda _: self.sleep_or_wake("wake")))
        self.progress = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, layout=widgets.Layout(width="320px"))
        self.phase = widgets.HTML()
        self.phase.add_class("mixvllm-phase")
        self.outcome = widgets.HTML()
        self.outcome.add_class("mixvllm-outcome")
        self.estimate = widgets.HTML()
        self.sampling_note = widgets.HTML()
        self.sampling_note.add_class("mixvllm-sampling-note")
        self.reported = widgets.HTML()
        # Hidden inputs keep their defaults, so they override nothing (a YAML file's values still apply).
        hidden = GPU_ONLY if on_cpu else CPU_ONLY
        shown = [w for key, w in self.inputs.items() if key not in hidden]
        super().__init__([
            widgets.HBox([self.yaml_path, self.load_button]),
            *shown,
            self.estimate,
            self.sampling_note,
            widgets.HBox([self.launch_button, self.stop_button, self.sleep_button, self.wake_button]),
            widgets.HBox([self.progress, self.phase]),
            self.outcome,
            self.reported,
        ])
        self.update_estimate()

    # -- config ----------------------------------------------------------------------------------

    def _base(self) -> ServeConfig:
        return load_server_config(self.yaml_path.value.strip() or None)

    def show_config(self, config: ServeConfig) -> None:
        """Set the widgets to ``config``'s values."""
        for key, dotted in FIELDS.items():
            value = _get(config, dotted)
            if key in ("model", "name", "cluster"):
                value = value or ""
            elif key == "max_model_len":
                value = value or 0
            self.inputs[key].value = value

    def load_yaml(self) -> ServeConfig:
        """Read the YAML file named in the field and show its settings in the widgets."""
        if not self.yaml_path.value.strip():
            raise MixVLLMError("YAML config: type the path of a server YAML file first")
        config = self._base()
        self._quiet = True  # one estimate for the whole file, not one per widget it changes
        try:
            self.show_config(config)
        finally:
            self._quiet = False
        self._loaded_yaml = self.yaml_path.value.strip()
        self.errors.clear()
        self.update_estimate()
        return config

    def overrides(self) -> dict[str, Any]:
        """Return the dotted overrides where the widgets differ from the YAML file (or the defaults)."""
        base = self._base()
        out: dict[str, Any] = {}
        for key, dotted in FIELDS.items():
            value = self.inputs[key].value
            if key in ("model", "name", "cluster"):
                value = value.strip() or None
            elif key == "max_model_len":
                value = value or None
            if value != _get(base, dotted):
                out[dotted] = value
        for key, value in self.sampling_defaults.items():
            if getattr(base.generation_defaults, key) is None:  # a YAML file's own defaults win
                out[f"generation_defaults.{key}"] = value
        return out

    def follow_sampling(self, server: Any) -> None:
        """Make Launch start with the selected server's sampling defaults, and say so.

        A server started by ``%vllm_serve --temperature 0`` is then reused by Launch, not loaded a second time
        at the model's own sampling.
        """
        params = {} if server.attached else server.config.generation_defaults.model_dump(exclude_none=True)
        self.sampling_defaults = params
        shown = ", ".join(f"{key} {value}" for key, value in params.items())
        self.sampling_note.value = (f"<span style='color:#57606a'>Sampling defaults, as {html.escape(server.name)}'s: "
                                    f"{html.escape(shown)}</span>" if shown else "")

    def build_config(self) -> ServeConfig:
        """Return the validated config the Launch button would start (YAML file + widgets)."""
        if self.yaml_path.value.strip() and self.yaml_path.value.strip() != self._loaded_yaml:
            self.load_yaml()  # a path typed but not loaded: show what will run before running it
        return load_server_config(self.yaml_path.value.strip() or None, self.overrides())

    def update_estimate(self) -> None:
        """Show the planner's estimate for the current settings."""
        if self._quiet:
            return
        try:
            config = load_server_config(self.yaml_path.value.strip() or None, self.overrides())
        except MixVLLMError as exc:
            self.estimate.value = f"<span style='color:#cf222e'>{html.escape(str(exc))}</span>"
            return
        self.estimate.value = plan_summary(config)

    # -- launch / stop ---------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while a launch is waiting for its server."""
        return self._thread is not None and self._thread.is_alive()

    def launch(self) -> threading.Thread:
        """Start (or reuse) a server with these settings; wait for it in a background thread."""
        if self.busy:
            raise MixVLLMError("a launch is already in progress; wait for it, or Stop it")
        config = self.build_config()
        self.errors.clear()
        self.reported.value, self._reported_for, self._target = "", None, None
        self.progress.value, self.progress.bar_style = 0.0, ""
        self.phase.value = ""
        self._set_outcome("Launching…")
        self.launch_button.disabled = True
        self._stopping = ""
        self._thread = start_thread(self.errors, lambda: self._launch(config), "launch")
        return self._thread

    def _launch(self, config: ServeConfig) -> None:
        from ..api import serve

        try:
            try:
                result = serve(config, wait=False, owner_kind="kernel" if in_notebook_kernel() else "python")
            except BaseException:
                self._set_outcome("Launch failed", error=True)
                raise
            server = self._target = result.server
            name = html.escape(server.name)
            self._set_outcome(f"{result.outcome} <b>{name}</b> at {html.escape(server.base_url)}/v1")
            self.on_server(server)
            started = time.monotonic()
            try:
                server.wait_until_ready()
            except BaseException as exc:
                if isinstance(exc, MixVLLMError) and self._stopping == server.name:
                    self._set_outcome(f"{name} stopped while starting")  # the user's Stop: not a failure
                    return
                self.progress.bar_style = "danger"
                self._set_outcome(f"{result.outcome} <b>{name}</b>: failed to start", error=True)
                raise
            self.show_progress(server, "ready")
            waited = f" after {time.monotonic() - started:.0f} s" if result.outcome == "Launched" else ""
            self._set_outcome(f"{result.outcome} <b>{name}</b>: ready{waited} at {html.escape(server.base_url)}/v1")
        finally:
            self.launch_button.disabled = False

    def wait(self, timeout: float | None = None) -> None:
        """Block until the current launch has finished (for scripts and tests)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def stop(self) -> threading.Thread:
        """Stop the selected server (in a background thread: a clean stop takes seconds)."""
        from ..api import stop_server
        from ..errors import OwnedElsewhereError

        server = self.get_server()
        if server is None:
            raise MixVLLMError("no server selected: nothing to stop")
        self._set_outcome(f"Stopping <b>{html.escape(server.name)}</b>…")
        self._stopping = server.name

        def run() -> None:
            try:
                summary = stop_server(server.name)
            except OwnedElsewhereError as exc:  # another kernel's server: left to it, and said so
                self._stopping = ""
                self._set_outcome(html.escape(str(exc)))
                return
            if server.process is None:
                server.state = "stopped"  # a handle from the registry has no heartbeat to say so
            self._set_outcome(html.escape(summary))

        return start_thread(self.errors, run, "stop")

    def sleep_or_wake(self, action: str) -> threading.Thread:
        """Put the selected server to sleep (level 1) or wake it, in a background thread; say how long it took."""
        from ..sleep import sleep_server, wake_server

        server = self.get_server()
        if server is None:
            raise MixVLLMError(f"no server selected: nothing to {action}")
        self._set_outcome(f"{'Putting' if action == 'sleep' else 'Waking'} <b>{html.escape(server.name)}</b>"
                          f"{' to sleep' if action == 'sleep' else ''}…")

        def run() -> None:
            started = time.monotonic()
            try:
                said = sleep_server(server) if action == "sleep" else wake_server(server)
            except MixVLLMError as exc:  # e.g. no CUDA: the one line says what is missing
                self._set_outcome(html.escape(str(exc)), error=True)
                return
            self._set_outcome(f"{html.escape(said)} ({time.monotonic() - started:.1f} s)")

        return start_thread(self.errors, run, action)

    def show_progress(self, server: Any, state: str) -> None:
        """Show the start-up phase read from the server's log (called by the monitor thread)."""
        if self.busy and server is not self._target:
            return  # a launch is under way: the previously selected server's ticks must not show
        name = html.escape(server.name)
        self.progress.layout.visibility = "hidden" if state in TERMINAL_STATES else "visible"
        if state == "starting":
            phase = logs.phase(logs.read_text(server.log_path)) if server.log_path else "launching"
            self.progress.value, self.progress.bar_style = logs.phase_progress(phase), ""
            self.phase.value = f"<span style='{GREY}'>{name}: {html.escape(phase)}</span>"
        elif state == "ready":
            self.progress.value, self.progress.bar_style = 1.0, "success"
            self.phase.value = f"<span style='color:#1a7f37'>{name}: ready</span>"
            if self._reported_for is not server:  # read the log once per server, not every tick
                self._reported_for = server
                self.reported.value = reported_summary(server)
        elif state in TERMINAL_STATES:
            # A start-up bar means nothing once the server is gone: a full one next to "stopped" reads as ready.
            self.progress.value = 0.0
            if state == "crashed":
                self.progress.bar_style = "danger"
            colour = "color:#cf222e" if state == "crashed" else GREY
            self.phase.value = f"<span style='{colour}'>{name}: {html.escape(state)}</span>"
        elif state == "unhealthy":  # it was ready and may recover
            self.progress.bar_style = "danger"
            self.phase.value = f"<span style='color:#bc4c00'>{name}: unhealthy</span>"
        else:
            self.phase.value = f"<span style='{GREY}'>{name}: {html.escape(state)}</span>"

    def _set_outcome(self, text: str, *, error: bool = False) -> None:
        self.outcome_text = text
        style = "color:#cf222e" if error else ""
        self.outcome.value = f"<div style='{style}'>{text}</div>"
