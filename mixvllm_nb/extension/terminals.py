"""``POST /mixvllm/api/servers/<name>/terminal``: a Jupyter terminal running ``mixvllm-chat`` for a server.

The terminal is one of jupyter_server_terminals' (the manager JupyterLab uses), so it is authenticated,
listed, culled and shut down like any other, and opens in JupyterLab or Notebook 7 by its name.

The Jupyter token never enters the terminal's environment: an exported ``OPENAI_API_KEY`` would reach
every OpenAI tool run in that shell, and wherever a profile's ``OPENAI_BASE_URL`` points. The proxy URL
and the token go into a 0600 file under the state dir instead, named by ``MIXVLLM_CHAT_TOKEN_FILE``,
which only ``mixvllm-chat`` reads.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized
from tornado import web

from ..chat import TOKEN_FILE_VAR
from ..errors import ServerNotFoundError
from ..process import registry
from .api_handlers import proxy_path
from .base import ExtensionState, MixvllmHandler, OpenAIError

# The fields of the request body: name -> (JSON type, the allowed values in words). null means the default.
BODY_FIELDS: dict[str, tuple[type, str]] = {
    "path": (str, "a string (a folder relative to the Jupyter root) or null"),
    "auto_start_chat": (bool, "true, false or null"),
}
_CREDENTIALS_RE = re.compile(r"^jupyter-(\d+)-.+\.json$")

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


def terminal_options(body: dict[str, Any]) -> tuple[str | None, bool | None]:
    """Return ``(path, auto_start_chat)`` from the request body; 400 naming a field of the wrong type."""
    for key, value in body.items():
        if key not in BODY_FIELDS:
            raise OpenAIError(400, f"{key}: unknown field; allowed: {', '.join(BODY_FIELDS)}", code="invalid_field")
        kind, allowed = BODY_FIELDS[key]
        # type() and not isinstance(): JSON's true is not a path, and 1 is not a boolean.
        if value is not None and type(value) is not kind:
            raise OpenAIError(400, f"{key}: expected {allowed}, got {json.dumps(value)}", code="invalid_field")
    return body.get("path"), body.get("auto_start_chat")


def write_chat_credentials(server: str, base_url: str, token: str) -> Path:
    """Write the proxy URL and the token for ``mixvllm-chat`` to a file only this user reads; return its path.

    One file per Jupyter process and server (opening more terminals rewrites it); files of Jupyter
    processes that are gone are removed on the way.
    """
    folder = registry.state_dir() / "chat"
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    for old in folder.iterdir():
        found = _CREDENTIALS_RE.match(old.name)
        if found and int(found.group(1)) != os.getpid() and not _pid_alive(int(found.group(1))):
            old.unlink(missing_ok=True)
    path = folder / f"jupyter-{os.getpid()}-{server}.json"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".chat-", suffix=".tmp")  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump({"server": server, "base_url": base_url, "api_key": token}, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def chat_command() -> str:
    """Return the shell line that starts the chat client (absolute: a login shell may reset PATH)."""
    script = shutil.which("mixvllm-chat") or str(Path(sys.executable).with_name("mixvllm-chat"))
    if Path(script).is_file():
        return shlex.quote(script)
    return f"{shlex.quote(sys.executable)} -m mixvllm_nb.chat"


def create_chat_terminal(
    terminal_manager: Any, *, name: str, env: dict[str, str], cwd: str, auto_start_chat: bool
) -> str:
    """Create terminal ``name`` with ``env`` in ``cwd``, type the chat command into it if asked; return its name."""
    name = terminal_manager.create(name=name, extra_env=env, cwd=cwd)["name"]
    if auto_start_chat:
        # The pty keeps what we type until the shell reads it, so there is no need to wait for a prompt.
        terminal_manager.terminals[name].ptyproc.write(chat_command() + "\r")
    return name


def chat_terminal_name(state: ExtensionState, terminal_manager: Any, server: str) -> str:
    """Return a new terminal name for a server's chat (``SERVER_chat_N``): never a running or ended one.

    Word characters only: Jupyter's terminal websocket route takes ``\\w+`` names.
    """
    stem = re.sub(r"\W", "_", server)
    number = 1
    while (name := f"{stem}_chat_{number}") in terminal_manager.terminals or name in state.retired_terminals:
        number += 1
    return name


def refuse_retired_names(terminal_manager: Any, state: ExtensionState) -> None:
    """Make the terminal manager refuse to create a terminal under an ended chat terminal's name.

    JupyterLab, given the link of a terminal that is gone, creates one with that name: a plain shell
    where the user expects the chat. Other names are not affected.
    """
    if getattr(terminal_manager, "_mixvllm_refuses_retired", False):
        return
    create = terminal_manager.create

    def create_unless_retired(**kwargs: Any) -> Any:
        name = kwargs.get("name")
        if name in state.retired_terminals:
            raise web.HTTPError(409, f"terminal {name!r} was a server's chat and has ended with it; open a new "
                                "one (%vllm_terminal, or POST /mixvllm/api/servers/<name>/terminal)")
        return create(**kwargs)

    terminal_manager.create = create_unless_retired
    terminal_manager._mixvllm_refuses_retired = True


async def close_ended_chat_terminals(state: ExtensionState, terminal_manager: Any) -> list[str]:
    """Close the chat terminals whose server has stopped or gone (and those the user closed); return their names."""
    closed = []
    for name, server in list(state.chat_terminals.items()):
        record = registry.get(server, missing_ok=True)
        ended = record is None or record.state in ("stopped", "exited", "crashed") or record.is_dead()
        if ended or name not in terminal_manager.terminals:
            if name in terminal_manager.terminals:
                await terminal_manager.terminate(name, force=True)
            state.retired_terminals.add(name)
            del state.chat_terminals[name]
            closed.append(name)
    return closed


class ServerTerminalHandler(MixvllmHandler):
    """Open a terminal whose ``mixvllm-chat`` reaches a server through the proxy (the token stays in a file)."""

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
        path, auto_start = terminal_options(self.json_object_body('such as {"path": "sub/folder"}'))
        cwd = terminal_cwd(self.settings["server_root_dir"], path)
        if auto_start is None:
            auto_start = bool((record.config.get("terminal") or {}).get("auto_start_chat", True))
        serverapp = self.settings["serverapp"]
        # JupyterHub's single-user servers have no Jupyter token; their API token authenticates instead.
        token = getattr(self.identity_provider, "token", "") or os.environ.get("JUPYTERHUB_API_TOKEN", "")
        v1 = proxy_path(local_server_url(serverapp), name) + "/v1"
        env = {
            "MIXVLLM_SERVER": name,
            TOKEN_FILE_VAR: str(write_chat_credentials(name, v1, token or "EMPTY")),
        }
        refuse_retired_names(terminal_manager, self.state)
        term_name = create_chat_terminal(terminal_manager, name=chat_terminal_name(self.state, terminal_manager, name),
                                         env=env, cwd=cwd, auto_start_chat=bool(auto_start))
        self.state.chat_terminals[term_name] = name
        self.set_status(201)
        self.finish(json.dumps({"name": term_name, "url": f"{self.base_url}terminals/{term_name}",
                                "server": name, "cwd": cwd, "chat_started": bool(auto_start)}))
