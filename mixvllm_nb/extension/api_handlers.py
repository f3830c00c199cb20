"""The servers REST API: ``/mixvllm/api/servers`` (list, start) and ``/mixvllm/api/servers/<name>`` (status, stop).

Handlers only translate HTTP to :mod:`mixvllm_nb.api` calls and show the one server view, with the
proxy's URLs added; the REST API, the magics and the panel share one process manager and registry.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.ioloop import IOLoop

from .. import api
from ..config import config_from_dict
from ..errors import ConfigError, MixVLLMError, NameTakenError, OwnedElsewhereError, ServerNotFoundError
from ..process import registry
from ..process.registry import state_dir
from ..process.view import ServerView, server_view
from .base import MixvllmHandler, OpenAIError
from .policy import check_remote_config


def proxy_path(base_url: str, name: str) -> str:
    """Return the proxy's root path for a server (a client appends ``/v1/...``, ``/health``, ``/metrics``)."""
    return f"{base_url.rstrip('/')}/mixvllm/servers/{name}"


def rest_view(record: registry.ServerRecord, base_url: str, live: Any = None) -> ServerView:
    """Return the server view with the URLs a Jupyter client uses (the proxy's, behind Jupyter's auth)."""
    data = server_view(record, live)
    root = proxy_path(base_url, record.name)
    data["urls"] = {"upstream": record.base_url, "proxy": f"{root}/v1", "health": f"{root}/health",
                    "metrics": f"{root}/metrics"}
    return data


def not_found(name: str, exc: Exception) -> OpenAIError:
    """Return the 404 for an unknown server name."""
    return OpenAIError(404, str(exc) or f"no server named {name!r}", code="server_not_found")


class ServersHandler(MixvllmHandler):
    """``GET`` every registered server; ``POST`` a config to start one."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        """Answer the list of servers (no secrets)."""
        # Off the event loop: a server on a Ray cluster is asked of Ray, over the network.
        views = await IOLoop.current().run_in_executor(None, lambda: [
            rest_view(r, self.base_url, self.state.servers.get(r.name)) for r in registry.list_records()])
        self.finish(json.dumps(views))

    @web.authenticated
    @authorized(action="execute")  # starting a server runs a process (and maybe a model's own code)
    async def post(self) -> None:
        """Start a server from a JSON config: 202 with the record while it starts, 200 if reused."""
        # Whoever may not start a kernel may not start a model server either: both run code here.
        if not self.authorizer.is_authorized(self, self.current_user, "execute", "kernels"):
            raise OpenAIError(403, "starting a model server runs code on this machine: it needs the permission "
                              "to start kernels (execute on kernels)", code="forbidden")
        body = self.json_object_body("the config's sections, as in the YAML file")
        flags = {key: self.query_flag(key, default) for key, default in (("reuse", True), ("replace", False),
                                                                    ("detach", False))}
        try:
            config = config_from_dict(body, source="request body")
            check_remote_config(config, allowed_env=set(self.state.config.allowed_env_vars),
                                log_roots=[Path(self.settings.get("server_root_dir", ".")), state_dir()])
            # serve() may convert the default model (seconds): never on the event loop.
            result = await IOLoop.current().run_in_executor(
                None, lambda: api.serve(config, wait=False, owner_kind="jupyter-server", **flags))
        except NameTakenError as exc:  # a conflict with the registry, not a bad body
            raise OpenAIError(409, str(exc), code="name_taken") from None
        except ConfigError as exc:
            raise OpenAIError(400, str(exc), code="invalid_config") from None
        except MixVLLMError as exc:
            raise OpenAIError(409, str(exc), code="start_failed") from None
        server = result.server
        if result.outcome == "Launched":
            self.state.servers[server.name] = server
        model = rest_view(registry.get(server.name), self.base_url, self.state.servers.get(server.name))
        model["outcome"] = result.outcome
        self.set_status(202 if result.outcome == "Launched" else 200)
        self.finish(json.dumps(model))


class ServerHandler(MixvllmHandler):
    """``GET`` one server's status; ``DELETE`` stops it (or forgets an attached one)."""

    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        """Answer the server's view and URLs."""
        try:
            record = registry.get(name)
        except ServerNotFoundError as exc:
            raise not_found(name, exc) from None
        view = await IOLoop.current().run_in_executor(None, rest_view, record, self.base_url,
                                                      self.state.servers.get(name))
        self.finish(json.dumps(view))

    @web.authenticated
    @authorized
    async def delete(self, name: str) -> None:
        """Stop the server and answer the stop report's summary."""
        try:
            # A stop waits for the process tree to end (up to ~15 s): off the event loop.
            force = self.query_flag("force", False)
            message = await IOLoop.current().run_in_executor(None, partial(api.stop_server, name, force=force))
        except ServerNotFoundError as exc:
            raise not_found(name, exc) from None
        except OwnedElsewhereError as exc:
            raise OpenAIError(409, str(exc).replace("--force (force=True)", "?force=true"),
                              code="owned_elsewhere") from None
        self.state.servers.pop(name, None)
        self.finish(json.dumps({"name": name, "message": message}))
