"""From a kernel (or any local process): find the Jupyter server, open a chat terminal, get the proxy URL.

The magics and the panel call these; they only need the standard library and jupyter_server's list
of running servers (the ``jpserver-*.json`` files of the runtime dir, which hold each server's token).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from ..errors import JupyterUnavailableError

ServerInfo = dict[str, Any]


def _running_servers() -> list[ServerInfo]:
    from jupyter_server.serverapp import list_running_servers

    return list(list_running_servers())


def _same_url(a: str, b: str) -> bool:
    pa, pb = urllib.parse.urlsplit(a), urllib.parse.urlsplit(b)
    return pa.port == pb.port and pa.path.rstrip("/") == pb.path.rstrip("/")


def _ancestor_pids() -> list[int]:
    try:
        return [p.pid for p in psutil.Process().parents()]
    except psutil.Error:
        return []


def find_jupyter_server() -> ServerInfo:
    """Return the running Jupyter server this process belongs to: its ``url``, ``token``, ``root_dir``, ``pid``.

    In order of preference: ``JUPYTER_SERVER_URL`` (set in Jupyter terminals; with ``JUPYTER_TOKEN``
    it needs no server list), the server that started this kernel (``JPY_PARENT_PID`` or an ancestor
    process), the one whose root folder holds the current folder, the only one running.
    Raises JupyterUnavailableError saying what was found when none fits.
    """
    env_url = os.environ.get("JUPYTER_SERVER_URL", "")
    env_token = os.environ.get("JUPYTER_TOKEN", "")
    servers = _running_servers()
    if env_url:
        for info in servers:
            if _same_url(info.get("url", ""), env_url):
                return info
        if env_token:
            return {"url": env_url if env_url.endswith("/") else env_url + "/", "token": env_token,
                    "root_dir": os.environ.get("JUPYTER_SERVER_ROOT", ""), "pid": None}
    if not servers:
        raise JupyterUnavailableError("no running Jupyter server found (start JupyterLab or `jupyter server`, "
                           "or set JUPYTER_SERVER_URL and JUPYTER_TOKEN)")
    parents = [int(os.environ["JPY_PARENT_PID"])] if os.environ.get("JPY_PARENT_PID", "").isdigit() else []
    for pid in parents + _ancestor_pids():
        for info in servers:
            if info.get("pid") == pid:
                return info
    cwd = Path.cwd().resolve()
    holding = [info for info in servers if _contains(info.get("root_dir", ""), cwd)]
    if holding:
        return max(holding, key=lambda info: len(str(info.get("root_dir", ""))))  # the closest root
    if len(servers) == 1:
        return servers[0]
    urls = ", ".join(info.get("url", "?") for info in servers)
    raise JupyterUnavailableError(f"several Jupyter servers are running ({urls}) and none holds {cwd}; "
                       "set JUPYTER_SERVER_URL and JUPYTER_TOKEN to choose one")


def _contains(root: str, path: Path) -> bool:
    if not root:
        return False
    root_path = Path(root).expanduser().resolve()
    return path == root_path or root_path in path.parents


def proxy_base_url(name: str, server: ServerInfo | None = None) -> tuple[str, str]:
    """Return ``(url, token)`` of a server's proxy root: an OpenAI client uses ``url + "/v1"`` and the token as key.

    The URL has the shape of ``InferenceServer.base_url`` (no ``/v1``), so it can stand in for it.
    """
    info = server or find_jupyter_server()
    return f"{info['url'].rstrip('/')}/mixvllm/servers/{name}", info.get("token", "")


def open_terminal(name: str, *, path: str | None = None, auto_start_chat: bool | None = None,
                  server: ServerInfo | None = None) -> dict[str, Any]:
    """Open a Jupyter terminal running ``mixvllm-chat`` for a server; return its ``name`` and ``url``.

    The terminal starts in ``path`` (relative to Jupyter's root), by default the current folder when
    it lies under the root (a kernel's current folder is its notebook's). ``url`` is a path that
    opens the terminal in the browser; ``full_url`` adds this machine's host and port.
    """
    info = server or find_jupyter_server()
    if path is None:
        root = info.get("root_dir", "")
        cwd = Path.cwd().resolve()
        if _contains(root, cwd):
            path = str(cwd.relative_to(Path(root).expanduser().resolve()))
    body: dict[str, Any] = {}
    if path and path != ".":
        body["path"] = path
    if auto_start_chat is not None:
        body["auto_start_chat"] = auto_start_chat
    answer = _request(info, "POST", f"mixvllm/api/servers/{urllib.parse.quote(name)}/terminal", body)
    answer["full_url"] = urllib.parse.urljoin(info["url"], answer["url"])
    return answer


def _request(info: ServerInfo, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """Call the extension's API with the server's token; raise JupyterUnavailableError with its error message."""
    url = f"{info['url'].rstrip('/')}/{path}"
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if info.get("token"):
        headers["Authorization"] = f"token {info['token']}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise JupyterUnavailableError(f"{method} {url}: {exc.code} {_error_message(exc.read())}") from None
    except urllib.error.URLError as exc:
        raise JupyterUnavailableError(f"cannot reach the Jupyter server at {info['url']}: {exc.reason}") from None


def _error_message(raw: bytes) -> str:
    try:
        data = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")[:200]
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", ""))
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])
    return str(data)[:200]
