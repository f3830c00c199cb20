"""The chat tab: a streamed transcript, system prompt, images, an output format (free text, JSON schema,
choice, regex) whose parsed value is shown, stop, clear and "copy as code"."""

from __future__ import annotations

import html
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from ..client import Conversation, StreamStats, chat_turn, openai_client, user_message
from ..display import answer_summary
from ..errors import MixVLLMError
from ..structured import OutputFormat, output_format, request_keywords
from .errors import ErrorBox, guarded, start_thread
from .sampling import SamplingSection
from .snippet import openai_code
from .throttle import Throttle

# At most ~10 transcript updates per second: each is a comm message the browser must render.
STREAM_UPDATE_INTERVAL = 0.1

# The output formats the chat offers, with what its text box then holds.
OUTPUT_FORMATS = {
    "free text": "",
    "JSON schema": 'A JSON schema, e.g. {"type": "object", "properties": {"name": {"type": "string"}}}',
    "choice": "The choices, separated by commas: yes, no, maybe",
    "regex": "A regular expression, e.g. [0-9]{4}-[0-9]{2}-[0-9]{2}",
}


def format_from_widgets(kind: str, text: str) -> OutputFormat | None:
    """Return the output format the selector and its text box ask for (None for free text); a one-line error
    for a bad one."""
    if kind == "free text":
        return None
    if not text.strip():
        raise MixVLLMError(f"output format {kind}: fill in the box below the selector ({OUTPUT_FORMATS[kind]})")
    if kind == "JSON schema":
        try:
            schema = json.loads(text)
        except ValueError as exc:
            raise MixVLLMError(f"output format JSON schema: the box does not hold JSON ({exc})") from None
        return output_format(json_schema=schema)
    if kind == "choice":
        return output_format(choice=[c.strip() for c in text.split(",") if c.strip()])
    return output_format(regex=text.strip())


def render_value(value: Any) -> str:
    """Return the parsed answer as HTML: JSON pretty-printed, anything else as text."""
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    shown = json.dumps(value, indent=2, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)
    return ("<div class='mixvllm-value'><b>Value:</b> <pre style='display:inline-block;margin:0;"
            f"background:#f6f8fa;padding:2px 6px'>{html.escape(shown)}</pre></div>")


def _content_html(content: Any) -> str:
    if isinstance(content, str):
        return html.escape(content)
    parts = []
    for part in content or []:
        if part.get("type") == "text":
            parts.append(html.escape(part.get("text", "")))
        elif part.get("type") == "image_url":
            parts.append("<i>[image]</i>")
    return " ".join(parts)


def render_transcript(messages: list[dict[str, Any]], partial: str | None = None) -> str:
    """Return the conversation as HTML; ``partial`` is an answer still streaming in."""
    rows = []
    for message in messages:
        role = message.get("role", "")
        who = {"user": "You", "assistant": "Model", "system": "System"}.get(role, role)
        cls = "mixvllm-answer" if role == "assistant" else f"mixvllm-{role}"
        rows.append(f"<div class='mixvllm-turn'><b>{who}:</b> <span class='{cls}'>"
                    f"{_content_html(message.get('content'))}</span></div>")
    if partial is not None:
        # The cursor sits outside the answer's span, so the span holds exactly the text so far.
        rows.append(f"<div class='mixvllm-turn'><b>Model:</b> <span class='mixvllm-answer'>{html.escape(partial)}"
                    "</span><span style='color:#0969da'>&#9612;</span></div>")
    if not rows:
        rows.append("<div style='color:#57606a'>No messages yet.</div>")
    return ("<div style='white-space:pre-wrap;max-height:320px;overflow:auto;border:1px solid #d0d7de;"
            "border-radius:6px;padding:6px'>" + "".join(rows) + "</div>")


class ChatSection(widgets.VBox):
    """A streaming chat with the selected server, using the sampling sliders' values."""

    def __init__(self, errors: ErrorBox, sampling: SamplingSection,
                 get_server: Callable[[], Any]) -> None:
        self.errors = errors
        self.sampling = sampling
        self.get_server = get_server
        self.conversation = Conversation()
        self.last_answer = ""
        self.last_value: Any = None
        self.pieces_received = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        guard = guarded(errors)

        self.transcript = widgets.HTML(render_transcript([]))
        self.transcript.add_class("mixvllm-transcript")
        self.system = widgets.Textarea(placeholder="System prompt (optional)", rows=1,
                                       layout=widgets.Layout(width="95%"))
        self.message = widgets.Textarea(placeholder="Message", rows=2, layout=widgets.Layout(width="95%"))
        self.message.add_class("mixvllm-message")
        self.send_button = widgets.Button(description="Send", button_style="primary")
        self.stop_button = widgets.Button(description="Stop generation", disabled=True)
        self.clear_button = widgets.Button(description="Clear")
        # Shown only for a model whose config declares a vision part (see follow()): a text model refuses images.
        self.upload = widgets.FileUpload(accept="image/*", multiple=True, description="Attach image",
                                         layout=widgets.Layout(display="none"))
        self.code_button = widgets.Button(description="Copy as code")
        self.terminal_button = widgets.Button(description="Chat in a terminal")
        self.output_format = widgets.Dropdown(options=list(OUTPUT_FORMATS), value="free text",
                                              description="Output")
        # The base model, and the LoRA adapters loaded on the server (each a model of its own).
        self.model = widgets.Dropdown(options=[], description="Model")
        self.model.add_class("mixvllm-model")
        self.models_button = widgets.Button(description="Refresh adapters", layout=widgets.Layout(display="none"))
        self.format_spec = widgets.Textarea(rows=2, layout=widgets.Layout(width="95%", display="none"))
        self.output_format.observe(lambda change: self._show_format_box(change["new"]), names="value")
        self.result = widgets.HTML()
        self.result.add_class("mixvllm-result")
        self.status = widgets.HTML()
        self.code = widgets.HTML()
        self.code.add_class("mixvllm-code")

        self.send_button.on_click(guard(lambda _: self.send()))
        self.stop_button.on_click(guard(lambda _: self.stop()))
        self.clear_button.on_click(guard(lambda _: self.clear()))
        self.code_button.on_click(guard(lambda _: self.show_code()))
        self.terminal_button.on_click(guard(lambda _: self.open_terminal()))
        self.models_button.on_click(guard(lambda _: self.refresh_models()))
        buttons = widgets.HBox([self.send_button, self.stop_button, self.clear_button, self.upload])
        extras = widgets.HBox([self.code_button, self.terminal_button])
        super().__init__([self.transcript, self.system, self.message,
                          widgets.HBox([self.model, self.models_button]), self.output_format, self.format_spec, buttons,
                          self.result, self.status, extras, self.code])

    # -- actions ---------------------------------------------------------------------------------

    @property
    def streaming(self) -> bool:
        """True while an answer is streaming in."""
        return self._thread is not None and self._thread.is_alive()

    def send(self, text: str | None = None) -> threading.Thread:
        """Send the message box's text (or ``text``) and stream the answer in a background thread."""
        server = self._ready_server()
        text = (self.message.value if text is None else text).strip()
        if not text:
            raise MixVLLMError("chat: type a message first")
        if self.streaming:
            raise MixVLLMError("chat: an answer is still streaming; wait, or press Stop generation")
        fmt = format_from_widgets(self.output_format.value, self.format_spec.value)
        extra = request_keywords(fmt, server.backend_name, "chat")
        images = [bytes(item["content"]) for item in self.upload.value]
        self.conversation.system = self.system.value.strip() or None
        params = {**self.sampling.params(), **extra}
        self.errors.clear()
        self.result.value = ""
        self.last_value = None
        self.message.value = ""
        self.upload.value = ()
        self._stop.clear()
        self.pieces_received = 0
        shown = [*self.conversation.messages, user_message(text, images)]
        self.transcript.value = render_transcript(shown, partial="")
        self.status.value = "<span style='color:#57606a'>waiting for the first token…</span>"
        self.send_button.disabled, self.stop_button.disabled = True, False
        self._thread = start_thread(self.errors, lambda: self._stream(server, text, images, params, fmt),
                                    "chat")
        return self._thread

    def _stream(self, server: Any, text: str, images: list[bytes], params: dict[str, Any],
                fmt: OutputFormat | None = None) -> None:
        # Rendering happens in the throttle's callback: only the updates that are shown cost HTML.
        throttle: Throttle[str | None] = Throttle(
            lambda partial: self._set_transcript(render_transcript(self.conversation.messages, partial=partial)),
            STREAM_UPDATE_INTERVAL)
        so_far, count, note = "", 0, ""
        stats = StreamStats()
        started = time.monotonic()
        try:
            client = openai_client(server.base_url, server.api_key)
            answer = chat_turn(client, self.model.value or server.served_model_name, self.conversation, text,
                               images=images or None, stats=stats, **params)
            try:
                for piece in answer:
                    so_far, count = so_far + piece, count + 1
                    self.pieces_received = count
                    if count == 1:
                        self.status.value = "<span style='color:#57606a'>streaming…</span>"
                    throttle.update(so_far)
                    if self._stop.is_set():
                        note = " (stopped)"
                        break
            finally:
                answer.close()  # aborts the request on the server when we stopped early
            if fmt is not None and not note:
                self._show_value(fmt, so_far, stats)
        finally:
            # Always end on the whole conversation (partial=None): the final text is never lost to the throttle.
            throttle.flush(None)
            self.last_answer = so_far
            seconds = time.monotonic() - started
            tokens = stats.usage.get("completion_tokens") if stats.usage else None
            self.status.value = f"<span style='color:#57606a'>{answer_summary(tokens, count, seconds, note)}</span>"
            self.send_button.disabled, self.stop_button.disabled = False, True

    def _show_value(self, fmt: OutputFormat, text: str, stats: StreamStats) -> None:
        # The value, or why there is none (cut at max_tokens, not valid): one line, in the result box.
        try:
            self.last_value = fmt.value_of(text, stats)
        except MixVLLMError as exc:
            self.result.value = f"<div style='color:#cf222e'>{html.escape(str(exc))}</div>"
            return
        self.result.value = render_value(self.last_value)

    def _show_format_box(self, kind: str) -> None:
        self.format_spec.placeholder = OUTPUT_FORMATS[kind]
        self.format_spec.layout.display = "none" if kind == "free text" else None

    def _set_transcript(self, value: str) -> None:
        self.transcript.value = value

    def wait(self, timeout: float | None = None) -> None:
        """Block until the current answer has finished streaming (for scripts and tests)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def stop(self) -> None:
        """Stop the answer being generated; what arrived so far is kept."""
        self._stop.set()

    def clear(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        if self.streaming:
            raise MixVLLMError("chat: stop the answer being generated before clearing")
        self.conversation = Conversation()
        self.last_answer = ""
        self.last_value = None
        self.transcript.value = render_transcript([])
        self.status.value = self.code.value = self.result.value = ""

    def show_code(self) -> str:
        """Show (and return) the ``openai`` call that sends this conversation with these settings (and format)."""
        server = self._server()
        conversation = Conversation(self.system.value.strip() or None, list(self.conversation.messages))
        draft = self.message.value.strip()
        if draft:
            conversation.messages.append(user_message(draft))
        elif not any(m.get("role") == "user" for m in conversation.messages):
            conversation.messages.append(user_message("What is the capital of France?"))
        fmt = format_from_widgets(self.output_format.value, self.format_spec.value)
        extra = request_keywords(fmt, server.backend_name, "chat")
        model = self.model.value or server.served_model_name
        code = openai_code(server.base_url, model, conversation.request_messages(), {**self.sampling.params(), **extra})
        self.code.value = (f"<pre style='font-size:12px;background:#f6f8fa;padding:6px;user-select:all'>"
                           f"{html.escape(code)}</pre>")
        return code

    def open_terminal(self) -> dict[str, str]:
        """Open ``mixvllm-chat`` for the server in a Jupyter terminal and show a link to it."""
        server = self._server()
        try:
            from ..extension.from_kernel import open_terminal
        except ImportError as exc:
            raise MixVLLMError(f"the Jupyter server extension is not available here: {exc}") from None
        try:
            info = open_terminal(server.name)
        except (MixVLLMError, OSError) as exc:  # no Jupyter server found, or it said no: one line says why
            raise MixVLLMError(f"chat in a terminal: {exc}") from None
        self.status.value = (f"Terminal <b>{html.escape(info['name'])}</b> runs the chat: "
                             f"<a href='{html.escape(info['url'])}' target='_blank'>open it</a> in a browser tab, "
                             "or as a JupyterLab tab from the Running Terminals and Kernels panel")
        return info

    # -- helpers ---------------------------------------------------------------------------------

    def _server(self) -> Any:
        server = self.get_server()
        if server is None:
            raise MixVLLMError("chat: no server selected; launch one or pick one above")
        return server

    def _ready_server(self) -> Any:
        from .monitor import server_state

        server = self._server()
        state = server_state(server)
        if state != "ready":
            raise MixVLLMError(f"chat: server {server.name} is {state}, not ready")
        return server

    def follow(self, server: Any) -> None:
        """Adapt to the selected server: its models (and adapters) to pick; images only when its model takes them."""
        vision = server is not None and accepts_images(server.model)
        self.upload.layout.display = None if vision else "none"
        if not vision:
            self.upload.value = ()  # nothing attached for one model travels to the next
        lora = server is not None and not server.attached and server.config.lora.enabled
        self.models_button.layout.display = None if lora else "none"
        self.model.options = [server.served_model_name] if server is not None else []
        if lora:
            self.refresh_models(quiet=True)

    def refresh_models(self, quiet: bool = False) -> list[str]:
        """List the server's base model and the adapters loaded on it now (``quiet``: no error while it starts)."""
        from ..adapters import list_adapters

        server = self._server()
        try:
            adapters = [adapter["name"] for adapter in list_adapters(server)]
        except MixVLLMError:
            if quiet:
                return list(self.model.options)
            raise
        chosen = self.model.value
        self.model.options = [server.served_model_name, *adapters]
        self.model.value = chosen if chosen in self.model.options else server.served_model_name
        return list(self.model.options)


def accepts_images(model: str) -> bool:
    """Return True when the model's config.json (a folder, or a hub id in the local cache) declares a vision part."""
    from ..plan.source import load_model_source

    try:
        config = load_model_source(model).config
    except MixVLLMError:  # a GGUF file, a remote server's name, a hub id not cached here: nothing says it sees
        return False
    # Vision-language configs nest their image encoder's settings under one of these (LLaVA, Qwen-VL, Phi-3-vision).
    return any(config.get(key) for key in ("vision_config", "vision_tower", "mm_vision_tower", "img_processor"))
