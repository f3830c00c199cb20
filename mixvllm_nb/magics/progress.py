"""Start-up progress in the cell that started a server: a bar in a notebook, a line per phase elsewhere."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from IPython.display import HTML, display

from ..display import progress_html, progress_text, startup_snapshot
from .common import in_notebook

if TYPE_CHECKING:
    from ..backends.base import InferenceServer


class StartupProgress:
    """Shows a starting server's phase (parsed from its log) in the cell that started it."""

    def __init__(self, server: InferenceServer) -> None:
        self.server = server
        self.started = time.monotonic()
        self.handle = display(HTML(self._html()), display_id=True) if in_notebook() else None
        self._last = ""

    def _html(self) -> str:
        phase, detail = startup_snapshot(self.server)
        return progress_html(self.server.name, phase, detail, time.monotonic() - self.started)

    def update(self) -> None:
        """Redraw the progress (HTML in a notebook, a printed line when the phase changes)."""
        if self.handle is not None:
            self.handle.update(HTML(self._html()))
            return
        phase, detail = startup_snapshot(self.server)
        if phase != self._last:
            print(progress_text(self.server.name, phase, detail), flush=True)
            self._last = phase

    def wait(self) -> None:
        """Block until ready, redrawing; raises the server's start errors."""
        done = threading.Event()
        error: list[BaseException] = []

        def waiter() -> None:
            try:
                self.server.wait_until_ready()
            except BaseException as exc:  # handed to the main thread below
                error.append(exc)
            finally:
                done.set()

        threading.Thread(target=waiter, daemon=True).start()
        while not done.wait(0.5):
            self.update()
        self.update()
        if error:
            raise error[0]

    def follow_in_background(self) -> None:
        """Keep redrawing from a thread until the server is ready or has failed."""

        # The server's heartbeat moves it out of "starting" (ready, crashed or timed out).
        def redraw() -> None:
            while self.server.state == "starting":
                self.update()
                time.sleep(0.5)
            self.update()

        threading.Thread(target=redraw, daemon=True, name=f"mixvllm-progress-{self.server.name}").start()
