"""What every mixvllm handler shares: our auth resource, OpenAI-shaped errors, the extension's settings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from jupyter_server.base.handlers import APIHandler
from tornado import web
from traitlets import Float, Int, List, Unicode
from traitlets.config import Configurable

# The resource name an Authorizer sees for every route of this extension (as "terminals" for
# jupyter_server_terminals): a deployment can allow Jupyter but deny model servers.
AUTH_RESOURCE = "mixvllm"

# OpenAI's error "type" for each status we send (clients such as the openai package map the
# status to an exception class; the type is what a person reads).
_ERROR_TYPES = {
    400: "invalid_request_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    502: "server_error",
    503: "server_unavailable",
}


class MixVLLM(Configurable):
    """Settings of the mixvllm_nb server extension (``c.MixVLLM.max_body_bytes = ...``)."""

    max_body_bytes = Int(
        4 * 2**20,
        config=True,
        help="Largest request body the proxy forwards, in bytes; a bigger one is answered 413 "
        "before anything reaches the model server.",
    )
    garden_max_body_bytes = Int(
        64 * 2**20,
        config=True,
        help="Largest request body the model-garden routes (generate, chat) accept, in bytes. Images travel in "
        "it as base64 (a 10 MB image is ~13.4 MB), so the default takes four; a bigger body is answered 413.",
    )
    retry_after = Int(
        5, config=True, help="Seconds a client is told to wait (Retry-After) while a server is starting."
    )
    connect_timeout = Float(
        10.0, config=True, help="Seconds to wait for a model server to accept a proxied connection."
    )
    allowed_env_vars = List(
        Unicode(), default_value=[], config=True,
        help="Environment variables a servers API request may set although they hook into the engine's process "
        "(LD_PRELOAD, PYTHON*, VLLM_SERVER_DEV_MODE, ...): name only those you trust every Jupyter user with.",
    )
    terminal_check_interval = Float(
        3.0, config=True, help="Seconds between checks that close the chat terminals of servers that have ended."
    )
    garden_max_image_bytes = Int(
        10 * 2**20, config=True,
        help="Largest image the model-garden routes accept, in bytes, uploaded or as a base64 data: URL (413 above).",
    )
    health_timeout = Float(
        2.0, config=True, help="Seconds a health probe of a server still marked 'starting' may take."
    )


@dataclass
class ExtensionState:
    """What the handlers share, kept in ``web_app.settings["mixvllm"]``."""

    config: MixVLLM
    # Servers this Jupyter server launched: holding them keeps their heartbeat objects alive.
    servers: dict[str, Any] = field(default_factory=dict)
    # Chat terminals opened for servers (terminal name -> server name): closed when their server ends.
    chat_terminals: dict[str, str] = field(default_factory=dict)
    # Names of chat terminals that have ended: never created again (as a plain shell, by a stale link).
    retired_terminals: set[str] = field(default_factory=set)


class OpenAIError(web.HTTPError):
    """An HTTP error sent as OpenAI's ``{"error": {"message", "type", "code"}}``."""

    def __init__(self, status: int, message: str, *, code: str, headers: dict[str, str] | None = None):
        super().__init__(status, "%s", message)
        self.message = message
        self.code = code
        self.headers = headers or {}


@contextmanager
def answered_as(*mapping: tuple[type[Exception], int, str]) -> Iterator[None]:
    """Turn the errors of a block into OpenAI-shaped answers: the first ``(class, status, code)`` that matches."""
    try:
        yield
    except tuple(cls for cls, _, _ in mapping) as exc:
        status, code = next((status, code) for cls, status, code in mapping if isinstance(exc, cls))
        raise OpenAIError(status, str(exc), code=code) from None


def error_body(status: int, message: str, code: str | None) -> str:
    """Return the JSON text of an OpenAI-shaped error."""
    return json.dumps(
        {"error": {"message": message, "type": _ERROR_TYPES.get(status, "server_error"), "code": code}}
    )


class MixvllmHandler(APIHandler):
    """Base of our handlers: Jupyter's authentication, our auth resource, OpenAI-shaped errors."""

    auth_resource = AUTH_RESOURCE

    @property
    def state(self) -> ExtensionState:
        return self.settings["mixvllm"]

    def json_object_body(self, example: str) -> dict[str, Any]:
        """Return the request body as a JSON object ({} when empty); 400 naming ``example`` otherwise."""
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError as exc:
            raise OpenAIError(400, f"request body: invalid JSON: {exc}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise OpenAIError(400, f"request body: expected a JSON object ({example})", code="invalid_json")
        return body

    def query_flag(self, name: str, default: bool) -> bool:
        """Return a true/false query argument (``?force=true``); 400 for anything else."""
        value = self.get_query_argument(name, None)
        if value is None:
            return default
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
        raise OpenAIError(400, f"query argument {name}={value!r}: use true or false", code="invalid_argument")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Answer every error, Jupyter's own 403s included, in OpenAI's error shape."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        code: str | None = None
        if isinstance(exc, OpenAIError):
            message, code = exc.message, exc.code
            for name, value in exc.headers.items():
                self.set_header(name, value)
        elif isinstance(exc, web.HTTPError):
            message = exc.log_message % exc.args if exc.log_message and exc.args else (exc.log_message or "")
            message = message or self._reason
        else:
            message = "internal error in the mixvllm_nb extension; see the Jupyter server log"
        if code is None:
            code = {403: "forbidden", 404: "not_found", 405: "method_not_allowed"}.get(status_code)
        self.finish(error_body(status_code, message, code))
