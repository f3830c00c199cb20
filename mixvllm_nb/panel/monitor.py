"""The monitor tab: memory (per GPU, or the server's resident memory on CPU), KV cache use and load.

A background thread refreshes it every ``interval`` seconds and stops when the panel is closed,
another server is selected, or the server stops; the kernel never waits for a scrape.
"""

from __future__ import annotations

import html
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
import psutil

from ..display import format_uptime, state_badge
from ..process import logs
from ..process.states import ENDED_STATES
from ..process.view import current_state

log = logging.getLogger("mixvllm_nb.panel")
TERMINAL_STATES = tuple(str(state) for state in ENDED_STATES)
GIB = 1024**3


def server_state(server: Any) -> str:
    """Return a server's current state, as every front reads it (:func:`mixvllm_nb.process.view.current_state`)."""
    return str(current_state(server.name, server))


def process_tree_rss(pid: int | None) -> int | None:
    """Return the resident memory of a process and all its children (vLLM runs three), in bytes."""
    if not pid:
        return None
    try:
        root = psutil.Process(pid)
        total = root.memory_info().rss
        for child in root.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                continue
        return total
    except psutil.Error:
        return None


def gpu_memory() -> list[tuple[str, int, int, int | None]]:
    """Return ``(label, used, total, utilization %)`` per GPU (bytes); empty on a machine without one.

    nvidia-smi first: it reads the driver's numbers without creating a CUDA context in the kernel
    (torch would hold hundreds of MiB of GPU memory for the rest of the session).
    """
    from .. import gpu

    gpus = gpu._from_nvidia_smi() or gpu.detect_gpus()
    return [(f"GPU {g.index} {g.name}", g.total_memory - (g.free_memory or 0), g.total_memory, g.utilization)
            for g in gpus if g.free_memory is not None]


def reported_summary(server: Any, label: str = "{engine} reported", css: str = "mixvllm-reported") -> str:
    """Return what the engine logged about its KV cache, as HTML ('' before it has)."""
    report = logs.kv_cache_report(logs.read_text(server.log_path)) if server.log_path else None
    if report is None:
        return ""
    label = label.format(engine=getattr(server, "engine_label", "vLLM"))
    return f"<div class='{css}'>{html.escape(label)}: <b>{html.escape(str(report))}</b></div>"


def _bar(label: str) -> tuple[widgets.HBox, widgets.FloatProgress, widgets.HTML]:
    bar = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, layout=widgets.Layout(width="260px"))
    text = widgets.HTML()
    return widgets.HBox([widgets.HTML(f"<b>{html.escape(label)}</b>", layout=widgets.Layout(width="210px")),
                         bar, text]), bar, text


class MonitorSection(widgets.VBox):
    """Live server figures: state, memory bars, KV cache usage, requests running/waiting, tokens/s."""

    def __init__(self, interval: float = 1.5, *, on_cpu: bool = True,
                 paused: Callable[[], bool] = lambda: False) -> None:
        self.interval = interval
        self.on_cpu = on_cpu
        self.paused = paused
        self.listeners: list[Callable[[Any, str], None]] = []
        self.ticks = 0
        self.last: dict[str, Any] = {}
        self._capacity_read = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.summary = widgets.HTML()
        self.summary.add_class("mixvllm-monitor-summary")
        self.memory = widgets.VBox()
        self.memory.add_class("mixvllm-memory")
        row, self.kv_bar, self.kv_text = _bar("KV cache usage")
        self.kv_row = row
        self.load = widgets.HTML()
        self.load.add_class("mixvllm-load")
        self.capacity = widgets.HTML()
        self.note = widgets.HTML()
        self._rows: dict[str, tuple[widgets.FloatProgress, widgets.HTML]] = {}
        self._lock = threading.Lock()
        super().__init__([self.summary, self.memory, self.kv_row, self.load, self.capacity, self.note])
        self.clear()

    # -- thread ----------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the refresh thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def watch(self, server: Any) -> None:
        """Follow ``server``; the thread that followed another one ends without a further update.

        No join here: this runs in the kernel's comm handler, which must not wait for a scrape.
        """
        with self._lock:
            self._stop.set()
            self._stop = threading.Event()
            self.last = {}
            self.capacity.value = ""
            self._capacity_read = False
            self._thread = threading.Thread(target=self._loop, args=(server, self._stop),
                                            name=f"mixvllm-panel-monitor-{server.name}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the refresh thread and wait for it (a scrape in flight times out within seconds)."""
        with self._lock:
            self._stop.set()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def clear(self) -> None:
        """Show that no server is followed (after the thread was told to stop)."""
        with self._lock:
            self.last = {}
            self.summary.value = "<span style='color:#57606a'>No server selected.</span>"
            self.load.value = self.capacity.value = self.note.value = ""

    def _loop(self, server: Any, stop: threading.Event) -> None:
        previous: dict[str, tuple[float, float]] = {}
        while not stop.is_set():
            if self.paused():  # nobody sees the panel (its output was cleared): no scrapes, no messages
                stop.wait(self.interval)
                continue
            state = "unknown"
            try:
                state = server_state(server)
                figures = self.read(server, state, previous)  # slow part (HTTP, psutil): no lock held
                with self._lock:
                    if stop.is_set():
                        return  # another server was selected meanwhile: its figures must not be overwritten
                    self.show(server, figures)
                    for listener in list(self.listeners):
                        listener(server, state)
            except Exception as exc:  # a failed scrape must not end the monitoring: say it, retry
                log.debug("monitor tick failed", exc_info=True)
                self.note.value = (f"<span style='color:#cf222e'>monitor: {html.escape(type(exc).__name__)}: "
                                   f"{html.escape(str(exc))}</span>")
            if state in TERMINAL_STATES:
                return  # nothing left to watch; selecting or launching a server starts a new thread
            stop.wait(self.interval)

    # -- one refresh -------------------------------------------------------------------------------

    def read(self, server: Any, state: str, previous: dict[str, tuple[float, float]]) -> dict[str, Any]:
        """Return the server's figures now: state, resident memory, GPU memory, load from /metrics."""
        from ..status import live_load

        load = live_load(server, previous) if state in ("ready", "unhealthy") else {}
        if hasattr(server, "refresh_log") and state not in TERMINAL_STATES:
            server.refresh_log()  # a server on a Ray cluster: the Logs tab shows its job's log
        rss = None if getattr(server, "attached", False) or state in TERMINAL_STATES else process_tree_rss(server.pid)
        figures: dict[str, Any] = {"state": state, "rss": rss, "gpus": [] if self.on_cpu else gpu_memory(), **load}
        if state == "ready" and not self._capacity_read:  # read the log once, not every tick
            figures["capacity"] = reported_summary(server, "KV cache capacity ({engine})", "mixvllm-capacity")
        return figures

    def show(self, server: Any, figures: dict[str, Any]) -> None:
        """Put figures from :meth:`read` into the widgets."""
        self.ticks += 1
        self.last = figures
        state = figures["state"]
        record = getattr(server, "record", None)
        started = record.started_at if record else None
        cluster = record.cluster if record else {}
        where = f"Ray job {cluster['job_id']}" if cluster else f"pid {server.pid or '-'}"
        uptime = format_uptime(time.time() - started) if started and state not in TERMINAL_STATES else "-"
        self.summary.value = (
            f"<b>{html.escape(server.name)}</b> {state_badge(state)} · {html.escape(server.served_model_name)} · "
            f"<code>{html.escape(server.base_url)}/v1</code> · {html.escape(where)} · up {uptime}"
        )
        self._show_memory(figures, server)
        if "capacity" in figures:
            self._capacity_read = True
            self.capacity.value = figures["capacity"]
        usage = figures.get("kv_usage")
        self.kv_bar.value = (usage or 0.0) / 100
        self.kv_text.value = f"{usage:.1f} %" if usage is not None else "-"
        if "running" in figures:
            rate = figures.get("tokens_per_s")
            self.load.value = (f"requests running <b>{figures['running']}</b> · waiting "
                               f"<b>{figures.get('waiting', '-')}</b> · generation "
                               f"<b>{'-' if rate is None else f'{rate:.1f}'} tokens/s</b>")
        elif state in ("ready", "unhealthy"):
            self.load.value = "<span style='color:#57606a'>no /metrics from this server</span>"
        else:
            self.load.value = ""
        self.note.value = ""

    def _show_memory(self, figures: dict[str, Any], server: Any) -> None:
        if figures["gpus"]:
            for label, used, total, busy in figures["gpus"]:
                if label not in self._rows:
                    row, bar, text = _bar(label)
                    self._rows[label] = (bar, text)
                    self.memory.children = (*self.memory.children, row)
                bar, text = self._rows[label]
                bar.value = used / total if total else 0.0
                text.value = f"{used / GIB:.1f} / {total / GIB:.1f} GiB" + ("" if busy is None else f" · {busy} % busy")
            return
        if "cpu" not in self._rows:
            row, bar, text = _bar("Server memory (RSS)")
            self._rows["cpu"] = (bar, text)
            self.memory.children = (row,)
        bar, text = self._rows["cpu"]
        rss, total = figures["rss"], psutil.virtual_memory().total
        bar.value = (rss or 0) / total
        text.value = (f"{rss / GIB:.2f} GiB of {total / GIB:.0f} GiB (all its processes)" if rss is not None
                      else "remote server" if getattr(server, "attached", False)
                      else "on a Ray cluster node" if getattr(getattr(server, "record", None), "cluster", None)
                      else "-")


class LogsSection(widgets.VBox):
    """The last lines of the server's log, following it while the monitor runs."""

    def __init__(self, lines: int = 40) -> None:
        self.lines = widgets.BoundedIntText(value=lines, min=5, max=1000, description="lines",
                                            layout=widgets.Layout(width="160px"))
        self.follow = widgets.Checkbox(value=True, description="follow")
        self.path = widgets.HTML()
        self.text = widgets.HTML()
        self.text.add_class("mixvllm-log")
        self._shown = ""
        super().__init__([widgets.HBox([self.lines, self.follow]), self.path, self.text])

    def show(self, server: Any, state: str = "") -> None:
        """Show the end of ``server``'s log if it changed (called by the monitor thread).

        Colour codes are removed; once the server is ``stopped`` (a stop someone asked for), its
        shutdown chatter is folded into one line. A crashed or exited server's log shows whole.
        """
        if not self.follow.value:
            return
        path = server.log_path
        if not path:
            self.path.value = "<span style='color:#57606a'>this server has no log here (attached)</span>"
            return
        wanted = self.lines.value
        if state == "stopped":  # read past the ~50 lines of shutdown messages, to show what came before them
            text = logs.fold_shutdown(logs.tail(path, wanted + 200))
            text = "\n".join(text.splitlines()[-wanted:])
        else:
            text = logs.tail(path, wanted)
        if text == self._shown:
            return  # unchanged: no comm message for the frontend
        self._shown = text
        self.path.value = f"<span style='color:#57606a'>{html.escape(path)}</span>"
        # column-reverse keeps the box scrolled to its end, like `tail -f`.
        self.text.value = ("<div style='display:flex;flex-direction:column-reverse;max-height:320px;overflow:auto'>"
                           f"<pre style='font-size:11px;margin:0'>{html.escape(text)}</pre></div>")
