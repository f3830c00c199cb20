"""``POST /mixvllm/api/servers/<name>/terminal``: a Jupyter terminal running ``mixvllm-chat`` for a server.

The terminal is one of jupyter_server_terminals' (the manager JupyterLab uses), so it is authenticated,
listed, culled and shut down like any other, and opens in JupyterLab or Notebook 7 by its name.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized
from tornado import web

from ..errors import ServerNotFoundError
from ..process import registry
from .base import MixvllmHandler, OpenAIError
from .manager import proxy_path

# Addresses a Jupyter server may listen on that a client on the same machine reaches as loopback.
_LOOPBACK_ALIASES = ("", "localhost", "0.0.0.0", "*", "::", "127.0.0.1")


def local_server_url(serverapp: Any) -> str:
    """Return the URL of this Jupyter server for a client on the same machine (base URL included)."""
    if serverapp.sock:
        raise OpenAIError(409, "this Jupyter server listens on a Unix socket, which the chat client cannot use; "
                          "run Jupyter with --port", code="unix_socket")
    ip = serverapp.ip
    host = "127.0.0.1" if ip in _LOOPBACK_ALIASES else (f"[{ip}]" if ":" in ip else ip)
    scheme = "https" if serverapp.certfile else "http"
    return f"{scheme}://{host}:{serverapp.port}{serverapp.base_url}"


def terminal_cwd(root_dir: str, path: str | None) -> str:
    """Return the folder a terminal starts in: ``path`` relative to the server root, never outside it."""
    root = Path(root_dir).expanduser().resolve()
    if not path:
        return str(root)
    target = (root / path).resolve()
    if target != root and root not in target.parents:
        raise OpenAIError(403, f"path {path!r} is outside the Jupyter root {root}", code="path_escape")
    if not target.is_dir():
        raise OpenAIError(400, f"path {path!r} is not a folder under the Jupyter root", code="path_not_found")
    return str(target)


def chat_command() -> str:
    """Return the shell line that starts the chat client (absolute: a login shell may reset PATH)."""
    script = shutil.which("mixvllm-chat") or str(Path(sys.executable).with_name("mixvllm-chat"))
    if Path(script).is_file():
        return shlex.quote(script)
    return f"{shlex.quote(sys.executable)} -m mixvllm_nb.chat"


def create_chat_terminal(
    terminal_manager: Any, *, env: dict[str, str], cwd: str, auto_start_chat: bool
) -> str:
    """Create a terminal with ``env`` in ``cwd``, type the chat command into it if asked; return its name."""
    model = terminal_manager.create(extra_env=env, cwd=cwd)
    name = model["name"]
    if auto_start_chat:
        # The pty keeps what we type until the shell reads it, so there is no need to wait for a prompt.
        terminal_manager.terminals[name].ptyproc.write(chat_command() + "\r")
    return name


class ServerTerminalHandler(MixvllmHandler):
    """Open a terminal whose environment points ``mixvllm-chat`` (or any OpenAI client) at a server."""

    @web.authenticated
    @authorized(action="execute")
    async def post(self, name: str) -> None:
        """Create the terminal: answer ``{"name", "url"}`` (the URL opens it in the browser)."""
        terminal_manager = self.settings.get("terminal_manager")
        if terminal_manager is None:
            raise OpenAIError(409, "Jupyter's terminals are disabled on this server (ServerApp.terminals_enabled "
                              "is false or jupyter_server_terminals is not enabled); no terminal was opened",
                              code="terminals_disabled")
        # A shell is a terminals capability: a user denied terminals must not get one through us.
        if self.authorizer is not None and not await ensure_async(
            self.authorizer.is_authorized(self, self.current_user, "execute", "terminals")
        ):
            raise OpenAIError(403, "not authorized to open terminals on this Jupyter server", code="forbidden")
        try:
            record = registry.get(name)
        except (ServerNotFoundError, ValueError) as exc:
            raise OpenAIError(404, str(exc), code="server_not_found") from None
        assert record is not None
        body = self.json_object_body('such as {"path": "sub/folder"}')
        cwd = terminal_cwd(self.settings["server_root_dir"], body.get("path"))
        auto_start = body.get("auto_start_chat")
        if auto_start is None:
            auto_start = bool((record.config.get("terminal") or {}).get("auto_start_chat", True))
        serverapp = self.settings["serverapp"]
        # JupyterHub's single-user servers have no Jupyter token; their API token authenticates instead.
        token = getattr(self.identity_provider, "token", "") or os.environ.get("JUPYTERHUB_API_TOKEN", "")
        env = {
            "OPENAI_BASE_URL": proxy_path(local_server_url(serverapp), name) + "/v1",
            # The Jupyter token authenticates the chat client to our proxy; the terminal is already a
            # shell of the same user, so it learns nothing it could not read from the runtime dir.
            "OPENAI_API_KEY": token or "EMPTY",
            "MIXVLLM_SERVER": name,
        }
        term_name = create_chat_terminal(terminal_manager, env=env, cwd=cwd, auto_start_chat=bool(auto_start))
        self.set_status(201)
        self.finish(json.dumps({"name": term_name, "url": f"{self.base_url}terminals/{term_name}",
                                "server": name, "cwd": cwd, "chat_started": bool(auto_start)}))
