"""Loading the extension: the routes under ``<base_url>mixvllm/`` and the shared state."""

from __future__ import annotations

from typing import Any

from jupyter_server.utils import url_path_join

from .api_handlers import ServerHandler, ServersHandler
from .base import ExtensionState, MixVLLM
from .proxy import ProxyHandler
from .terminals import ServerTerminalHandler

# The registry's own rule for names: a name can never carry a slash, a dot-dot or a host.
NAME = r"(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,63})"


def routes(base_url: str) -> list[tuple[str, type]]:
    """Return the URL patterns of the extension under Jupyter's base URL."""
    return [
        (url_path_join(base_url, r"/mixvllm/api/servers"), ServersHandler),
        (url_path_join(base_url, rf"/mixvllm/api/servers/{NAME}"), ServerHandler),
        (url_path_join(base_url, rf"/mixvllm/api/servers/{NAME}/terminal"), ServerTerminalHandler),
        # Any path under a server reaches the handler, so that refused ones get our JSON 404.
        (url_path_join(base_url, rf"/mixvllm/servers/{NAME}/(?P<path>.*)"), ProxyHandler),
    ]


def load(serverapp: Any) -> None:
    """Add the servers API, the proxy and the terminal route to a running Jupyter server."""
    web_app = serverapp.web_app
    web_app.settings["mixvllm"] = ExtensionState(config=MixVLLM(parent=serverapp))
    web_app.add_handlers(".*$", routes(web_app.settings["base_url"]))
    serverapp.log.info("mixvllm_nb: proxy at %smixvllm/servers/<name>/v1, API at %smixvllm/api/servers",
                       web_app.settings["base_url"], web_app.settings["base_url"])
