"""The Jupyter server extension's lifecycle: routes and shared state when Jupyter starts, clean-up when it stops."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from jupyter_server.extension.application import ExtensionApp
from tornado.ioloop import PeriodicCallback

from .adapters_handlers import AdapterHandler, AdaptersHandler
from .api_handlers import ServerHandler, ServersHandler
from .base import ExtensionState, MixVLLM
from .garden import garden_routes
from .openapi import OpenAPIHandler
from .proxy import ProxyHandler
from .routes_handlers import RouteHandler, RoutesHandler
from .sleep_handlers import SleepHandler, WakeHandler
from .terminals import ServerTerminalHandler, close_ended_chat_terminals
from .upstream import close_idle_connections

if TYPE_CHECKING:
    from ..backends.base import InferenceServer

# The registry's own rule for names: a name can never carry a slash, a dot-dot or a host.
log = logging.getLogger("mixvllm_nb")
NAME = r"(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,63})"


def routes() -> list[tuple[str, type]]:
    """Return the URL patterns of the extension (Jupyter puts its base URL in front)."""
    return [
        (r"/mixvllm/api/openapi.json", OpenAPIHandler),
        (r"/mixvllm/api/servers", ServersHandler),
        (rf"/mixvllm/api/servers/{NAME}", ServerHandler),
        (rf"/mixvllm/api/servers/{NAME}/terminal", ServerTerminalHandler),
        (rf"/mixvllm/api/servers/{NAME}/adapters", AdaptersHandler),
        (rf"/mixvllm/api/servers/{NAME}/adapters/(?P<adapter>[A-Za-z0-9][A-Za-z0-9_.-]{{0,63}})", AdapterHandler),
        (rf"/mixvllm/api/servers/{NAME}/sleep", SleepHandler),
        (rf"/mixvllm/api/servers/{NAME}/wake", WakeHandler),
        (r"/mixvllm/api/routes", RoutesHandler),
        (rf"/mixvllm/api/routes/{NAME}", RouteHandler),
        # Any path under a server (or a route of several) reaches the handler, so that refused ones get our JSON 404.
        (rf"/mixvllm/servers/{NAME}/(?P<path>.*)", ProxyHandler),
        *garden_routes(),  # seed 004's model-garden API, at /mixvllm/garden
    ]


class MixVLLMApp(ExtensionApp):
    """The servers API, the authenticated proxy and the chat terminals, inside a Jupyter server.

    Set up in :meth:`initialize_settings`; :meth:`stop_extension` closes the upstream HTTP client and
    stops the servers this Jupyter server started without ``detach`` (as a kernel stops its own).
    """

    name = "mixvllm_nb"
    load_other_extensions = True

    def initialize_settings(self) -> None:
        """Share the extension's settings and state with the handlers (``settings["mixvllm"]``)."""
        state = self.settings["mixvllm"] = ExtensionState(config=MixVLLM(parent=self.serverapp))
        # A server's chat terminals close when it stops, whoever stops it (a kernel, the CLI, its owner's exit).
        self._terminal_check = PeriodicCallback(lambda: self._close_ended_terminals(state),
                                                state.config.terminal_check_interval * 1000)
        self._terminal_check.start()
        base_url = self.serverapp.web_app.settings["base_url"] if self.serverapp.web_app else "/"
        self.log.info("mixvllm_nb: proxy at %smixvllm/servers/<name>/v1, API at %smixvllm/api/servers",
                      base_url, base_url)

    def _close_ended_terminals(self, state: ExtensionState) -> None:
        manager = self.serverapp.web_app.settings.get("terminal_manager") if self.serverapp.web_app else None
        if manager is not None and state.chat_terminals:
            asyncio.ensure_future(close_ended_chat_terminals(state, manager))

    def initialize_handlers(self) -> None:
        """Add the routes (authenticated, under the ``mixvllm`` auth resource)."""
        self.handlers.extend(routes())

    async def stop_extension(self) -> None:
        """Close the upstream connections and stop the servers this Jupyter server owns (not the detached ones)."""
        state: ExtensionState | None = self.settings.get("mixvllm")
        if state is None:
            return
        self._terminal_check.stop()
        close_idle_connections()  # the proxy's kept-alive upstream connections
        owned = [server for server in state.servers.values() if not server.detach and server.state.live]
        if owned:
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(None, _stop, server) for server in owned))
        state.servers.clear()


def _stop(server: InferenceServer) -> None:
    try:
        log.info("mixvllm_nb: stopped %s at Jupyter shutdown: %s", server.name, server.stop(timeout=10).summary())
    except Exception:  # shutting down anyway: one failure must not keep the others running
        log.exception("mixvllm_nb: could not stop %s at Jupyter shutdown", server.name)
