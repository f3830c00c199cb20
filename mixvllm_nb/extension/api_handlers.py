"""The servers REST API: ``/mixvllm/api/servers`` (list, start) and ``/mixvllm/api/servers/<name>`` (status, stop)."""

from __future__ import annotations

import json

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.ioloop import IOLoop

from ..errors import ConfigError, MixVLLMError, NameTakenError, ServerNotFoundError
from . import manager
from .base import MixvllmHandler, OpenAIError


def not_found(name: str, exc: Exception) -> OpenAIError:
    """Return the 404 for an unknown server name."""
    return OpenAIError(404, str(exc) or f"no server named {name!r}", code="server_not_found")


class ServersHandler(MixvllmHandler):
    """``GET`` every registered server; ``POST`` a config to start one."""

    @web.authenticated
    @authorized
    def get(self) -> None:
        """Answer the list of servers (no API keys)."""
        self.finish(json.dumps(manager.list_models(self.base_url)))

    @web.authenticated
    @authorized(action="execute")  # starting a server runs a process (and maybe a model's own code)
    async def post(self) -> None:
        """Start a server from a JSON config: 202 with the record while it starts, 200 if reused."""
        body = self.json_object_body("the config's sections, as in the YAML file")
        flags = {key: self._flag(key, default) for key, default in (("reuse", True), ("replace", False),
                                                                    ("detach", False))}
        try:
            # serve() may convert the default model (seconds): never on the event loop.
            server, outcome = await IOLoop.current().run_in_executor(None, lambda: manager.start(body, **flags))
        except NameTakenError as exc:  # a conflict with the registry, not a bad body
            raise OpenAIError(409, str(exc), code="name_taken") from None
        except ConfigError as exc:
            raise OpenAIError(400, str(exc), code="invalid_config") from None
        except MixVLLMError as exc:
            raise OpenAIError(409, str(exc), code="start_failed") from None
        self.state.servers[server.name] = server
        model = manager.get_model(server.name, self.base_url)
        model["outcome"] = outcome
        self.set_status(202 if outcome == "Launched" else 200)
        self.finish(json.dumps(model))

    def _flag(self, name: str, default: bool) -> bool:
        value = self.get_query_argument(name, None)
        if value is None:
            return default
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
        raise OpenAIError(400, f"query argument {name}={value!r}: use true or false", code="invalid_argument")


class ServerHandler(MixvllmHandler):
    """``GET`` one server's status; ``DELETE`` stops it (or forgets an attached one)."""

    @web.authenticated
    @authorized
    def get(self, name: str) -> None:
        """Answer the server's record, state and URLs."""
        try:
            self.finish(json.dumps(manager.get_model(name, self.base_url)))
        except (ServerNotFoundError, ValueError) as exc:
            raise not_found(name, exc) from None

    @web.authenticated
    @authorized
    async def delete(self, name: str) -> None:
        """Stop the server and answer the stop report's summary."""
        try:
            # A stop waits for the process tree to end (up to ~15 s): off the event loop.
            message = await IOLoop.current().run_in_executor(None, manager.stop, name)
        except (ServerNotFoundError, ValueError) as exc:
            raise not_found(name, exc) from None
        self.state.servers.pop(name, None)
        self.finish(json.dumps({"name": name, "message": message}))
