"""What every backend provides on top of the process lifecycle: its command, environment and probes.

Subclass :class:`InferenceServer` and override ``build_command`` (and, as needed, ``build_env``,
``get_health_endpoint``, ``is_ready``, ``list_endpoints``, ``default_model``, ``check_resources``);
register it with :func:`mixvllm_nb.backends.register_backend` to use it by name in a config.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from ..config import ServeConfig, build_config
from ..errors import ConfigError, MixVLLMError
from ..process import registry
from ..process.server import ServerProcess


def config_value(config: ServeConfig, path: str) -> Any:
    """Return the value at ``section.field`` of a config (``"tools.chat_template"``)."""
    section, name = path.split(".")
    return getattr(getattr(config, section), name)


def refuse_unsupported(config: ServeConfig, engine: str, feature: str, paths: tuple[str, ...], hint: str = "") -> None:
    """Raise one ConfigError naming the first of ``paths`` (``section.field``) that ``config`` sets:
    ``feature`` (e.g. "tool calling is") is not on ``engine`` in mixvllm_nb."""
    for path in paths:
        if config_value(config, path):
            raise ConfigError(f"{path}: {feature} not on this engine ({engine}) in mixvllm_nb{hint}; "
                              "use backend vllm for it")


class InferenceServer(ServerProcess):
    """A model server run as a background process, tracked until it is stopped.

    Build one from a :class:`ServeConfig` or from seed-style keywords
    (``VLLMServer(model=..., port=..., output_dir=..., config={"api_server_args": [...]})``),
    then :meth:`start` it, or use it as a context manager.
    """

    # How people call the engine in messages ("Launched x on vLLM").
    engine_label: ClassVar[str] = "custom"
    # False for an engine without vLLM's Prometheus /metrics: status says "n/a", nobody scrapes it.
    has_metrics: ClassVar[bool] = True

    def __init__(
        self,
        model: str | None = None,
        *,
        config: ServeConfig | dict[str, Any] | None = None,
        detach: bool = False,
        owner_kind: str = "python",
        **options: Any,
    ) -> None:
        name = self.get_backend_name()  # seed 002's subclasses name themselves by overriding this method
        backend = name if name != "base" else None
        super().__init__(build_config(backend, model, config, options), detach=detach, owner_kind=owner_kind)

    @property
    def binary_path(self) -> str:
        """The program that runs the server (seed 002's attribute; see :meth:`get_binary_path`)."""
        return self.get_binary_path()

    @property
    def server_url(self) -> str:
        """The server's root URL (seed 002's name for :attr:`base_url`)."""
        return self.base_url

    @classmethod
    def from_record(cls, record: registry.ServerRecord) -> InferenceServer:
        """Return a handle on a registered server, launched by any process (or attached)."""
        data = dict(record.config)
        data.setdefault("server", {})["api_key"] = record.api_key or None
        if record.attached:
            data["server"]["port"] = None  # a remote port may be < 1024 (https): the URL says it
        server = cls(config=ServeConfig.model_validate(data), detach=record.detached)
        server.name = record.name
        server.record = record
        server.resolved = True
        from ..process.view import effective_state

        server.state = effective_state(record)
        return server

    # -- what subclasses provide ------------------------------------------------------------------

    def get_binary_path(self) -> str:
        """Return the program that runs the server (this Python, for Python servers)."""
        return sys.executable

    def build_command(self) -> list[str]:
        """Return the backend's own launch command (without a profiler wrapper)."""
        raise NotImplementedError

    def build_env(self) -> dict[str, str]:
        """Return the environment variables the backend needs on top of the config's."""
        return {}

    def get_health_endpoint(self) -> str:
        """Return the URL that answers 200 when the server is healthy."""
        return f"{self.base_url}/health"

    def list_endpoints(self) -> dict[str, str]:
        """Return the server's main endpoints by name (default: the OpenAI-compatible ones)."""
        return self.openai_endpoints()

    def openai_endpoints(self) -> dict[str, str]:
        """Return the OpenAI-compatible routes that every server here offers, by name."""
        return {
            "health": self.get_health_endpoint(),
            "models": f"{self.base_url}/v1/models",
            "completions": f"{self.base_url}/v1/completions",
            "chat": f"{self.base_url}/v1/chat/completions",
        }

    def serves_model(self) -> bool:
        """Return True when the server's ``/v1/models`` lists the model clients ask for."""
        from ..process.http import http_get_json

        models = http_get_json(f"{self.base_url}/v1/models", api_key=self.api_key, timeout=5)
        return self.served_model_name in [m.get("id") for m in (models or {}).get("data", [])]

    def is_ready(self) -> bool:
        """Return True when the server answers requests (default: the health endpoint is 200)."""
        return self.check_health()

    def default_model(self, *, convert: bool = True) -> tuple[str, str]:
        """Return what to serve when no model is named, and the name clients use for it.

        The embedded SmolLM2 as a Hugging Face folder (converted once from its GGUF when needed;
        ``convert=False`` only names the folder it would be converted into).
        """
        from ..models import DEFAULT_MODEL_ID, converted_model_dir, resolve_default_model

        try:
            resolved = resolve_default_model(prepare=convert)
        except MixVLLMError:
            if convert:
                raise  # a failed conversion must stop the launch, not start vLLM on a missing folder
            return str(converted_model_dir()), DEFAULT_MODEL_ID
        return resolved.model, resolved.served_model_name

    # -- the launch as it will run -----------------------------------------------------------------

    def get_launch_command(self) -> list[str]:
        """Return the full launch command, profiler wrapper included (never holds the API key)."""
        self.prepare(convert_default_model=False)
        command = self.build_command()
        profile = self.config.profile
        if profile.enabled and profile.tool == "nsys":
            output = str(Path(profile.output_dir) / f"{self.name or 'server'}-%p")
            return ["nsys", "profile", "-o", output, *profile.args, *command]
        if profile.enabled and profile.tool == "amd":
            output = str(Path(profile.output_dir) / f"{self.name or 'server'}.csv")
            return ["rocprof", "-o", output, *profile.args, *command]
        return command

    def get_launch_env(self) -> dict[str, str]:
        """Return the variables added to the server's environment (API key included)."""
        self.prepare(convert_default_model=False)
        env = dict(self.build_env())
        pinned = sorted(set(env) & set(self.config.env_vars))
        if pinned:  # e.g. HOST for llama.cpp: the server would listen elsewhere than the registry says
            raise ConfigError(f"env_vars.{pinned[0]}: set by mixvllm_nb for the {self.backend_name} backend and "
                              "not overridable; use its config field instead (server.host, server.port, "
                              "inference.cpu_kv_cache_gib, generation_defaults)")
        env.update(self.config.env_vars)
        return env

    @property
    def torch_profiling(self) -> bool:
        """True when the config turns on the PyTorch profiler (start and stop it with :meth:`profile`)."""
        return self.config.profile.enabled and self.config.profile.tool == "pytorch"

    def profile(self, action: str, timeout: float = 120.0) -> str:
        """``start`` or ``stop`` the server's PyTorch profiler; return where the traces go.

        The server must run with ``profile: {enabled: true, tool: pytorch}``: vLLM then offers
        ``POST /start_profile`` and ``/stop_profile``, and writes a trace per process when stopped.
        """
        if action not in ("start", "stop"):
            raise ConfigError(f"profile: {action!r} is not an action; allowed: start, stop")
        if not self.torch_profiling:
            raise ConfigError(f"profile: {self.name} was not started with profile: {{enabled: true, tool: pytorch}}; "
                              "restart it with that config to use the PyTorch profiler")
        from ..process.http import http_post

        status, body = http_post(f"{self.base_url}/{action}_profile", api_key=self.api_key, timeout=timeout)
        if status != 200:
            raise MixVLLMError(f"profile {action}: {self.name} answered {status or 'nothing'}: "
                               f"{body.decode(errors='replace')[:200]}")
        return str(Path(self.config.profile.output_dir).resolve())

    # -- talking to it (seed 004's API; the client module does the work) ---------------------------

    def chat(self, message: str | list[dict[str, Any]], *, system: str | None = None,
             images: list[Any] | None = None, on_piece: Callable[[str], None] | None = None,
             json_schema: Any = None, choice: list[str] | None = None, regex: str | None = None,
             grammar: str | Path | None = None, **sampling: Any) -> Any:
        """Send one chat request and return a :class:`~mixvllm_nb.client.Reply` (``.text``, ``.usage``, ``.value``).

        ``message`` is the user's text (with optional ``images``: paths, URLs or bytes) or a whole
        OpenAI ``messages`` list. Sampling not given comes from the server's generation defaults.
        ``on_piece`` is called with each piece as it streams in. Structured output, one at a time:
        ``json_schema`` (a pydantic model class: ``.value`` is an instance; a dict or a .json file: ``.value``
        is the parsed JSON), ``choice`` (a list of strings), ``regex``, ``grammar`` (EBNF/GBNF text);
        an answer cut at ``max_tokens`` is a one-line error, never a half-parsed value.
        """
        from ..client import chat_once

        return chat_once(self.base_url, self.api_key, self.served_model_name, message, system=system,
                         images=images, on_piece=on_piece, json_schema=json_schema, choice=choice, regex=regex,
                         grammar=grammar, engine=self.backend_name, **sampling)

    def generate(self, prompt: str, *, on_piece: Callable[[str], None] | None = None, json_schema: Any = None,
                 choice: list[str] | None = None, regex: str | None = None, grammar: str | Path | None = None,
                 **sampling: Any) -> Any:
        """Complete ``prompt`` (no chat template) and return a :class:`~mixvllm_nb.client.Reply`; structured
        output as for :meth:`chat`."""
        from ..client import generate_once

        return generate_once(self.base_url, self.api_key, self.served_model_name, prompt, on_piece=on_piece,
                             json_schema=json_schema, choice=choice, regex=regex, grammar=grammar,
                             engine=self.backend_name, **sampling)

    def status(self) -> dict[str, Any]:
        """Return what every front shows of this server (:func:`mixvllm_nb.process.view.server_view`)."""
        from ..process.view import server_view

        if self.record is None:
            return {"name": self.name, "backend": self.backend_name, "model": self.served_model_name,
                    "state": str(self.state), "error": self.error}
        return server_view(self.record, live=self, details=True)

