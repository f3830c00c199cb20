"""What the fronts show: start-up progress, status tables and server cards, as HTML and as text.

Pure string building: no IPython or ipywidgets import, so the manager can use it too.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from .process import logs

if TYPE_CHECKING:
    from .backends.base import InferenceServer

_STATE_COLOURS = {
    "ready": "#1a7f37",
    "starting": "#9a6700",
    "unhealthy": "#bc4c00",
    "crashed": "#cf222e",
    "exited": "#57606a",
    "stopped": "#57606a",
    "dead": "#cf222e",
}


def state_badge(state: str) -> str:
    """Return a coloured HTML badge for a server state."""
    colour = _STATE_COLOURS.get(state, "#57606a")
    return f'<span style="color:{colour};font-weight:600">{html.escape(state)}</span>'


def progress_html(name: str, phase: str, detail: str = "", elapsed: float | None = None) -> str:
    """Return an HTML progress line for a starting server: bar, phase name and detail.

    An ended server (``phase`` is a state such as ``stopped``, ``exited`` or ``crashed``) gets no
    bar: a full one would read as "ready" next to the word "stopped".
    """
    seconds = f" · {elapsed:.0f} s" if elapsed is not None else ""
    detail_html = f"<div style='color:#57606a'>{html.escape(detail)}</div>" if detail else ""
    if phase not in logs.PHASE_NAMES:
        return f"<div><b>{html.escape(name)}</b>: {state_badge(phase)}{seconds}{detail_html}</div>"
    fraction = logs.phase_progress(phase)
    return (
        f"<div><b>{html.escape(name)}</b>: {html.escape(phase)}{seconds}"
        f"<div style='background:#eaeef2;width:320px;height:8px;border-radius:4px'>"
        f"<div style='background:#0969da;width:{fraction * 100:.0f}%;height:8px;border-radius:4px'></div>"
        f"</div>{detail_html}</div>"
    )


def progress_text(name: str, phase: str, detail: str = "", elapsed: float | None = None) -> str:
    """Return the same progress as one line of text (no bar for an ended server)."""
    seconds = f" {elapsed:.0f}s" if elapsed is not None else ""
    tail = f"{phase}{seconds}{' - ' + detail if detail else ''}"
    if phase not in logs.PHASE_NAMES:
        return f"{name}: {tail}"
    bar = "#" * int(logs.phase_progress(phase) * 20)
    return f"{name}: [{bar:<20}] {tail}"


def answer_summary(tokens: int | None, pieces: int, seconds: float, note: str = "") -> str:
    """Return what an answer took, in a user's words: ``27 tokens in 2.0 s, 13.5 tokens a second``.

    ``tokens`` is what the server counted (None when it sent no count: an answer stopped early);
    then the streamed pieces stand in for it, about one token each.
    """
    count = tokens if tokens is not None else pieces
    if not count:
        return f"no answer after {seconds:.1f} s{note}"
    shown = f"{count}" if tokens is not None else f"about {count}"
    rate = f", {count / seconds:.1f} tokens a second" if seconds > 0 else ""
    return f"{shown} tokens in {seconds:.1f} s{rate}{note}"


class Table:
    """A table that renders as HTML in Jupyter and as aligned text in a terminal."""

    def __init__(
        self, columns: list[str], rows: list[list[Any]], *, title: str = "", html_cells: set[str] | None = None
    ) -> None:
        self.columns = columns
        self.rows = rows
        self.title = title
        self.html_cells = html_cells or set()

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>" for c in self.columns)
        body = []
        for row in self.rows:
            cells = []
            for column, value in zip(self.columns, row, strict=False):
                text = _cell(value)
                shown = text if column in self.html_cells else html.escape(text)
                cells.append(f"<td style='text-align:left'>{shown}</td>")
            body.append(f"<tr>{''.join(cells)}</tr>")
        title = f"<caption style='text-align:left'><b>{html.escape(self.title)}</b></caption>" if self.title else ""
        return f"<table>{title}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"

    def __repr__(self) -> str:
        plain = [[_strip_tags(_cell(v)) for v in row] for row in self.rows]
        widths = [max([len(c)] + [len(r[i]) for r in plain]) for i, c in enumerate(self.columns)]
        lines = [self.title] if self.title else []
        lines.append("  ".join(c.ljust(w) for c, w in zip(self.columns, widths, strict=False)))
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False)) for row in plain]
        return "\n".join(lines)

    def to_records(self) -> list[dict[str, Any]]:
        """Return the rows as dicts (DataFrame-friendly)."""
        return [dict(zip(self.columns, row, strict=False)) for row in self.rows]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return str(value)


def _strip_tags(text: str) -> str:
    import re

    return html.unescape(re.sub(r"<[^>]+>", "", text))


def format_uptime(seconds: float | None) -> str:
    """Return ``1h 02m`` / ``3m 07s`` / ``42s`` for a number of seconds."""
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds}s"


def on_vllm(server: InferenceServer, what: str) -> bool:
    """Return True when ``server`` runs on vLLM; else print, in one line, that ``what`` needs vLLM.

    For notebooks that also run on the light engine (mybinder.org): ``if on_vllm(srv, "vLLM's KV
    cache report"): ...`` runs the vLLM-only part, or says plainly why it is skipped.
    """
    if server.backend_name == "vllm":
        return True
    print(f"[{what}: needs vLLM; this server runs on {server.engine_label}, so this part is skipped]")
    return False


def startup_snapshot(server: InferenceServer) -> tuple[str, str]:
    """Return a starting server's phase (read from its log) and a detail line, for any front."""
    text = logs.read_text(server.log_path) if server.log_path else ""
    state = str(server.state)
    phase = "ready" if state == "ready" else logs.phase(text)
    kv = logs.kv_cache_report(text)
    detail = f"KV cache {kv}" if kv else ""
    if state == "ready":
        detail = f"{server.base_url}/v1 · " + detail if detail else f"{server.base_url}/v1"
    elif state in ("crashed", "exited", "stopped"):
        phase, detail = state, server.error or "see %vllm_logs"
    return phase, detail
