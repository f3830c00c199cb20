"""The route magic: one name in front of several servers, reached through Jupyter's proxy by model name."""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument

from .common import magic_command, parse

_USAGE = "%vllm_route NAME SERVER [SERVER ...] | --list | --remove NAME | --config routes.yaml"


def describe_route(route: dict[str, Any]) -> str:
    """Return one line: the route, its servers and their base models, and its proxy URL."""
    from ..errors import MixVLLMError
    from ..extension.from_kernel import proxy_base_url

    members = ", ".join(f"{server} ({route['models'].get(server, '?')})" for server in route["servers"])
    try:
        url = f"{proxy_base_url(route['name'])[0]}/v1"
    except (MixVLLMError, OSError):  # no Jupyter server here: the path is what a client appends to its URL
        url = f"<jupyter>/mixvllm/servers/{route['name']}/v1"
    return f"route {route['name']}: {members}; {url} (choose the server by model)"


@magics_class
class RouteMagics(Magics):
    """``%vllm_route``."""

    @line_magic
    @magic_command()
    @argument("--list", action="store_true", help="list the routes")
    @argument("--remove", metavar="NAME", help="forget a route (its servers keep running)")
    @argument("--config", metavar="FILE", help="create or replace the routes of a YAML file: "
                                               "routes: {NAME: [server_a, server_b]}")
    @argument("words", nargs="*", help="the route's name, then its servers")
    def vllm_route(self, line: str = "") -> Any:
        """Put one name in front of several servers: ``/mixvllm/servers/NAME/v1`` sends each request to the
        server that serves its ``model`` (adapters included), and ``/v1/models`` lists them all.

        ``%vllm_route NAME SERVER [SERVER ...]`` creates or replaces it, ``--list`` shows them, ``--remove NAME``
        forgets one. Routes are seen by every kernel and by the Jupyter server's proxy.
        """
        from ..process import routes

        args = parse(self.vllm_route, line)
        chosen = [bool(args.words), args.list, args.remove is not None, args.config is not None]
        if sum(chosen) != 1:
            raise UsageError(f"%vllm_route: expected {_USAGE}")
        if args.list:
            found = routes.list_routes()
            print("\n".join(describe_route(routes.get_route(name)) for name in found) or "no route")
            return found
        if args.remove is not None:
            if not routes.remove_route(args.remove):
                raise UsageError(f"no route named {args.remove!r}; routes: {', '.join(routes.list_routes()) or 'none'}")
            print(f"removed route {args.remove} (its servers keep running)")
            return None
        made = routes.routes_from_file(args.config) if args.config else None
        if made is None:
            if len(args.words) < 2:
                raise UsageError(f"%vllm_route: give the route's name and at least one server: {_USAGE}")
            made = [routes.set_route(args.words[0], args.words[1:])]
        print("\n".join(describe_route(route) for route in made))
        return made[0] if len(made) == 1 else made
