"""The routes REST API: ``/mixvllm/api/routes`` (list, create) and ``/mixvllm/api/routes/<name>`` (show, set, forget).

A route puts one name in front of several servers: the proxy's ``/mixvllm/servers/<route>/v1`` sends each
request to the server that serves its ``model`` (:mod:`.routing`). Handlers only translate HTTP to
:mod:`mixvllm_nb.process.routes` calls, the same ones as ``%vllm_route``.
"""

from __future__ import annotations

import json
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..errors import ConfigError, NameTakenError
from ..process import routes
from .api_handlers import proxy_path
from .base import MixvllmHandler, OpenAIError, answered_as

_EXAMPLE = '{"name": "models", "servers": ["server_a", "server_b"]}'


def route_view(route: dict[str, Any], base_url: str) -> dict[str, Any]:
    """Return a route as JSON-ready data, with the proxy URL an OpenAI client uses for it."""
    return {**route, "urls": {"proxy": f"{proxy_path(base_url, route['name'])}/v1"}}


class _RoutesBase(MixvllmHandler):
    def _servers_of(self, body: dict[str, Any]) -> list[str]:
        servers = body.get("servers")
        if not isinstance(servers, list) or not servers or not all(isinstance(s, str) for s in servers):
            raise OpenAIError(400, f"request body: 'servers' must be a non-empty list of server names ({_EXAMPLE})",
                              code="invalid_route")
        return servers

    def _call(self, func: Any, *args: Any) -> Any:
        """Run a routes call; its errors become OpenAI-shaped answers."""
        with answered_as((routes.RouteNotFoundError, 404, "route_not_found"), (NameTakenError, 409, "name_taken"),
                         (ConfigError, 400, "invalid_route")):
            return func(*args)


class RoutesHandler(_RoutesBase):
    """``GET`` every route; ``POST {"name", "servers"}`` creates one (201; 409 if it exists: PUT replaces)."""

    @web.authenticated
    @authorized
    def get(self) -> None:
        """Answer the list of routes."""
        self.finish(json.dumps([route_view(routes.get_route(name), self.base_url) for name in routes.list_routes()]))

    @web.authenticated
    @authorized
    def post(self) -> None:
        """Create a route; 201 with it."""
        body = self.json_object_body(_EXAMPLE)
        name = body.get("name")
        if not isinstance(name, str):
            raise OpenAIError(400, f"request body: 'name' must be the route's name ({_EXAMPLE})", code="invalid_route")
        servers = self._servers_of(body)
        if routes.get_route(name, missing_ok=True) is not None:
            raise OpenAIError(409, f"route {name!r} exists; PUT /mixvllm/api/routes/{name} replaces it",
                              code="route_exists")
        route = self._call(routes.set_route, name, servers)
        self.set_status(201)
        self.finish(json.dumps(route_view(route, self.base_url)))


class RouteHandler(_RoutesBase):
    """``GET`` one route; ``PUT {"servers"}`` creates or replaces it; ``DELETE`` forgets it."""

    @web.authenticated
    @authorized
    def get(self, name: str) -> None:
        """Answer the route."""
        self.finish(json.dumps(route_view(self._call(routes.get_route, name), self.base_url)))

    @web.authenticated
    @authorized
    def put(self, name: str) -> None:
        """Create or replace the route with the body's servers."""
        route = self._call(routes.set_route, name, self._servers_of(self.json_object_body('{"servers": [...]}')))
        self.finish(json.dumps(route_view(route, self.base_url)))

    @web.authenticated
    @authorized
    def delete(self, name: str) -> None:
        """Forget the route (its servers keep running)."""
        if not routes.remove_route(name):
            self._call(routes.get_route, name)  # the 404, listing the routes there are
        self.finish(json.dumps({"name": name, "message": f"removed route {name} (its servers keep running)"}))
