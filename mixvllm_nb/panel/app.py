"""The control panel: one widget to launch a server, watch it, tune sampling, chat and read its log."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from ..display import state_badge
from ..errors import MixVLLMError
from .chat import ChatSection
from .errors import ErrorBox, guarded
from .launch import LaunchSection
from .monitor import LogsSection, MonitorSection, server_state
from .routes import RoutesSection
from .sampling import SamplingSection

if TYPE_CHECKING:
    from ..backends.base import InferenceServer

TAB_TITLES = ("Launch", "Monitor", "Sampling", "Chat", "Logs", "Routes")


class ControlPanel(widgets.VBox):
    """A vLLM control room in a notebook: server selector and state, then six tabs.

    Launch (settings, estimate, Launch/Stop, progress), Monitor (memory, KV cache, load), Sampling
    (sliders), Chat (streaming transcript), Logs (the server log's tail) and Routes (several servers
    behind one name). Errors of any button show in red under the header. ``close()`` stops the
    background threads.
    """

    def __init__(self, name: str | None = None, *, interval: float = 1.5) -> None:
        from ..api import list_servers
        from ..gpu import detect_gpus

        self.server: InferenceServer = None
        self.errors = ErrorBox()
        guard = guarded(self.errors)
        on_cpu = not detect_gpus()
        self.selector = widgets.Dropdown(description="server", options=[], value=None,
                                         layout=widgets.Layout(width="360px"))
        self.refresh_button = widgets.Button(description="Refresh",
                                             tooltip="re-read the list of registered servers",
                                             layout=widgets.Layout(width="100px"))
        self.state = widgets.HTML()
        self.state.add_class("mixvllm-state")
        self.sampling = SamplingSection()
        self._seen = False
        self.monitor = MonitorSection(interval, on_cpu=on_cpu, paused=self.hidden)
        self.logs = LogsSection()
        self.launch = LaunchSection(self.errors, self._on_launched, lambda: self.server, on_cpu=on_cpu)
        self.chat = ChatSection(self.errors, self.sampling, lambda: self.server)
        self.routes = RoutesSection(self.errors)
        self.monitor.listeners += [self._show_state, self.launch.show_progress, self.logs.show]
        self.tabs = widgets.Tab(children=[self.launch, self.monitor, self.sampling, self.chat, self.logs,
                                          self.routes], titles=TAB_TITLES)
        self.selector.observe(guard(self._on_select), names="value")
        self.refresh_button.on_click(guard(lambda _: (self.refresh_servers(), self.routes.refresh())))
        title = widgets.HTML("<b style='font-size:14px'>mixvllm control panel</b>")
        super().__init__([title, widgets.HBox([self.selector, self.refresh_button, self.state]),
                          self.errors, self.tabs])
        self.add_class("mixvllm-panel")
        # The frontend counts the views it shows: once shown, zero views means the output was
        # cleared or the cell re-run, and the monitor pauses instead of scraping for nobody.
        self.observe(self._on_views, names="_view_count")
        self._view_count = 0
        self.refresh_servers()
        if name:
            if name not in self.selector.options:
                raise MixVLLMError(f"no running server named {name!r}; registered: "
                                   f"{', '.join(self.selector.options) or 'none'}")
            self.selector.value = name
        elif self.selector.options:  # the newest live one, as %vllm_chat picks it (else the newest)
            live = [v["name"] for v in list_servers() if not v["dead"]]
            self.selector.value = (live or list(self.selector.options))[-1]

    # -- servers ---------------------------------------------------------------------------------

    def refresh_servers(self) -> list[str]:
        """Re-read the registry: every live server, launched or attached, becomes selectable."""
        from ..api import list_servers

        # Ended servers stay selectable: a crashed server's state and log are what its user needs to see.
        names = [s["name"] for s in list_servers()]
        current = self.selector.value
        if current and current not in names and self.server is not None:
            names.append(current)  # keep showing a server that just stopped, with its state
        self.selector.options = names
        if current in names:
            self.selector.value = current
        return names

    def select(self, name: str | None) -> None:
        """Bind the panel to server ``name``: sliders, chat, monitor and logs follow it."""
        if name is None:
            self.monitor.stop(timeout=0)  # in a comm handler: signal the thread, do not wait for it
            self.monitor.clear()
            self.server = None
            self.state.value = ""
            return
        if self.selector.value != name:
            if name not in self.selector.options:
                self.refresh_servers()
            self.selector.value = name  # observe() calls back into _bind
            return
        self._bind(name)

    def _on_select(self, change: dict[str, Any]) -> None:
        if change["new"] is None:
            self.select(None)
        elif self.server is None or self.server.name != change["new"]:
            self._bind(change["new"])

    def _bind(self, name: str, server: InferenceServer = None) -> None:
        from ..api import get_server

        self.server = server if server is not None else get_server(name)
        self.sampling.load_defaults(self.server.config.generation_defaults.as_request_params())
        self.launch.follow_sampling(self.server)
        self.chat.follow(self.server)  # e.g. image upload only for a vision model
        self._show_state(self.server, server_state(self.server))
        self.monitor.watch(self.server)

    def _on_launched(self, server: InferenceServer) -> None:
        """Select a server the Launch tab just started or reused (called from its thread)."""
        names = self.refresh_servers()
        if server.name not in names:
            self.selector.options = [*names, server.name]
        self.server = server  # the launched object itself: its heartbeat knows its state first
        self.selector.value = server.name
        self._bind(server.name, server)

    def _show_state(self, server: InferenceServer, state: str) -> None:
        if self.server is not None and server is not self.server:
            return  # a late tick from the thread of a server no longer selected
        self.state.value = f"{state_badge(state)} <span style='color:#57606a'>{html.escape(server.name)}</span>"

    # -- lifetime --------------------------------------------------------------------------------

    def hidden(self) -> bool:
        """True once the panel was shown and no view of it is left in the frontend."""
        return self._seen and not self._view_count

    def _on_views(self, change: dict[str, Any]) -> None:
        if change["new"]:
            self._seen = True

    def close(self) -> None:
        """Stop the monitor and any answer streaming in, then close the widgets."""
        self.monitor.stop()
        self.chat.stop()
        super().close()

    def __repr__(self) -> str:
        name = self.server.name if self.server is not None else "no server"
        return f"<ControlPanel {name}>"
