"""Routes: one name in front of several servers, so one OpenAI URL reaches every model they serve.

A route is stored in ``routes.json`` in the registry's state folder (0700, checked by the registry),
so a route a kernel creates is seen by the Jupyter server's proxy, the CLI and every other kernel.
The file holds no secret but is written as the registry writes its records: mode 0600, atomically
(``os.replace``), under the registry's lock, so that a route's members are checked against the same
registry they are written with. Each member's served model name is kept with the route: a member
that has ended (its record gone) still owns its model, which then answers 502 instead of 404.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ConfigError, MixVLLMError, NameTakenError
from . import registry

ROUTES_FILE = "routes.json"


class RouteNotFoundError(MixVLLMError, KeyError):
    """No route has this name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def _file() -> Path:
    return registry.state_dir() / ROUTES_FILE


def _read() -> dict[str, dict[str, Any]]:
    """Return every route by name: ``{"servers": [...], "models": {server: served model}}`` ({} when none)."""
    try:
        data = json.loads(_file().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {name: route for name, route in data.items()
            if isinstance(route, dict) and isinstance(route.get("servers"), list)}


def _write(routes: dict[str, dict[str, Any]]) -> None:
    """Replace the routes file atomically, mode 0600 (call with the registry's lock held)."""
    path = _file()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".routes.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(routes, handle, indent=1, sort_keys=True)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def list_routes() -> dict[str, list[str]]:
    """Return every route's members by route name, sorted by name."""
    return {name: list(route["servers"]) for name, route in sorted(_read().items())}


def get_route(name: str, *, missing_ok: bool = False) -> dict[str, Any] | None:
    """Return ``{"name", "servers", "models"}`` of a route; RouteNotFoundError (or None) when there is none."""
    route = _read().get(name)
    if route is None:
        if missing_ok:
            return None
        raise RouteNotFoundError(f"no route named {name!r}; routes: {', '.join(list_routes()) or 'none'}")
    return {"name": name, "servers": list(route["servers"]), "models": dict(route.get("models") or {})}


def is_route(name: str) -> bool:
    """Return True when ``name`` is a route that no server's name hides (a server of that name wins)."""
    return name in _read() and registry.get(name, missing_ok=True) is None


def set_route(name: str, servers: list[str]) -> dict[str, Any]:
    """Create or replace the route ``name`` in front of ``servers``; return it.

    Raises ConfigError (one line) for a bad name, no member, or a member that is not a registered
    server (listing the registered ones), NameTakenError when a server has the route's name.
    """
    registry.validate_name(name)
    members = list(dict.fromkeys(servers))  # a member named twice is one member
    if not members:
        raise ConfigError(f"route {name!r}: give at least one server; registered: {_registered()}")
    with registry.locked():  # the registry's own lock: no server can appear or vanish while we check
        if registry.get(name, missing_ok=True) is not None:
            raise NameTakenError(f"route {name!r}: a server has that name; choose another route name")
        records = {member: registry.get(member, missing_ok=True) if _valid(member) else None for member in members}
        unknown = [member for member, record in records.items() if record is None]
        if unknown:
            raise ConfigError(f"route {name!r}: {', '.join(map(repr, unknown))} not a registered server; "
                              f"registered: {_registered()}")
        models = {member: record.served_model_name for member, record in records.items() if record is not None}
        routes = _read()
        routes[name] = {"servers": members, "models": models}
        _write(routes)
    return {"name": name, "servers": members, "models": models}


def remove_route(name: str) -> bool:
    """Forget the route ``name``; return whether there was one."""
    with registry.locked():
        routes = _read()
        if routes.pop(name, None) is None:
            return False
        _write(routes)
    return True


def routes_from_file(path: str | Path) -> list[dict[str, Any]]:
    """Create or replace every route of a YAML file ``routes: {NAME: [server_a, server_b]}``; return them."""
    from ..config.loading import load_yaml

    data = load_yaml(path)
    routes = data.get("routes")
    if not isinstance(routes, dict) or not routes:
        raise ConfigError(f"{path}: expected 'routes: {{NAME: [server_a, server_b]}}' (got {type(routes).__name__})")
    for name, servers in routes.items():
        if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
            raise ConfigError(f"{path}: routes.{name}: expected a list of server names (got {servers!r})")
    return [set_route(str(name), servers) for name, servers in routes.items()]


def _valid(name: str) -> bool:
    try:
        registry.validate_name(name)
    except ConfigError:
        return False
    return True


def _registered() -> str:
    return ", ".join(record.name for record in registry.list_records()) or "none"
