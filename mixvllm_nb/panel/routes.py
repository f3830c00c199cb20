"""The panel's Routes tab: several running servers behind one name (``%vllm_route``), made and removed by clicks."""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as widgets

from ..errors import MixVLLMError
from .errors import ErrorBox, guarded

GREY = "color:#57606a"


class RoutesSection(widgets.VBox):
    """Name a route, pick its servers, Create; the routes there are, each with its proxy URL, and Remove."""

    def __init__(self, errors: ErrorBox) -> None:
        guard = guarded(errors)
        self.name = widgets.Text(description="route name", placeholder="e.g. models")
        self.members = widgets.SelectMultiple(description="servers", options=[], rows=4)
        self.create_button = widgets.Button(description="Create route", button_style="success")
        self.remove_choice = widgets.Dropdown(description="route", options=[])
        self.remove_button = widgets.Button(description="Remove route")
        self.listing = widgets.HTML()
        self.listing.add_class("mixvllm-routes")
        self.create_button.on_click(guard(lambda _: self.create()))
        self.remove_button.on_click(guard(lambda _: self.remove()))
        note = widgets.HTML(f"<span style='{GREY}'>A route sends each request to the server whose model it names, "
                            "through Jupyter's proxy: one OpenAI base URL for several models.</span>")
        super().__init__([note, self.name, self.members, self.create_button,
                          widgets.HBox([self.remove_choice, self.remove_button]), self.listing])
        self.refresh()

    def refresh(self) -> dict[str, list[str]]:
        """Re-read the registered servers (the choices) and the routes (the listing); return the routes."""
        from ..api import list_servers
        from ..process.routes import list_routes

        self.members.options = [view["name"] for view in list_servers() if not view["dead"]]
        routes = list_routes()
        self.remove_choice.options = list(routes)
        rows = "".join(f"<tr><td><b>{html.escape(name)}</b></td><td>{html.escape(', '.join(servers))}</td>"
                       f"<td><code>&lt;jupyter&gt;/mixvllm/servers/{html.escape(name)}/v1</code></td></tr>"
                       for name, servers in routes.items())
        self.listing.value = (f"<table><tr><th>route</th><th>servers</th><th>OpenAI base URL</th></tr>{rows}</table>"
                              if rows else f"<span style='{GREY}'>no routes yet</span>")
        return routes

    def create(self) -> dict[str, Any]:
        """Create (or replace) the route named in the box, in front of the selected servers."""
        from ..process.routes import set_route

        name = self.name.value.strip()
        if not name:
            raise MixVLLMError("route: type a route name first")
        route = set_route(name, list(self.members.value))
        self.refresh()
        return route

    def remove(self) -> bool:
        """Remove the route chosen in the list."""
        from ..process.routes import remove_route

        if not self.remove_choice.value:
            raise MixVLLMError("route: no route to remove")
        removed = remove_route(self.remove_choice.value)
        self.refresh()
        return removed
