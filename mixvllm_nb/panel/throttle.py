"""Rate-limit widget updates: a fast token stream must not flood the frontend with messages."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
_UNSET = object()


class Throttle(Generic[T]):
    """Pass values to ``callback`` at most once per ``interval`` seconds; the last value always arrives.

    ``update(value)`` shows the value at once when the previous call is at least ``interval`` old
    (so the first piece of an answer appears without delay); otherwise it keeps the value and a timer
    shows the newest one when the interval is over. ``flush(value)`` shows a final value at once and
    cancels whatever is pending, so the end of a stream is never lost or shown late.
    ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        callback: Callable[[T], None],
        interval: float = 0.1,
        *,
        clock: Callable[[], float] = time.monotonic,
        use_timer: bool = True,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval={interval!r}: must be > 0 seconds")
        self.callback = callback
        self.interval = interval
        self.clock = clock
        self.use_timer = use_timer
        self.calls = 0
        self._lock = threading.Lock()
        self._last: float | None = None
        self._pending: object = _UNSET
        self._timer: threading.Timer | None = None

    def update(self, value: T) -> None:
        """Show ``value`` now if allowed, else remember it as the one to show next."""
        with self._lock:
            now = self.clock()
            if self._last is None or now - self._last >= self.interval:
                self._cancel_timer()
                self._pending = _UNSET
                self._emit(value, now)
                return
            self._pending = value
            if self.use_timer and self._timer is None:
                timer = threading.Timer(self.interval - (now - self._last), self._fire)
                timer.args = (timer,)
                timer.daemon = True
                self._timer = timer
                timer.start()

    def flush(self, value: object = _UNSET) -> None:
        """Show ``value`` (or the pending one) now, whatever the rate; cancel the timer."""
        with self._lock:
            self._cancel_timer()
            if value is _UNSET:
                value, self._pending = self._pending, _UNSET
                if value is _UNSET:
                    return
            self._pending = _UNSET
            self._emit(value, self.clock())  # type: ignore[arg-type]

    def poll(self) -> None:
        """Show the pending value if its interval is over (for callers that run without a timer)."""
        with self._lock:
            if self._pending is not _UNSET and (self._last is None or self.clock() - self._last >= self.interval):
                value, self._pending = self._pending, _UNSET
                self._emit(value, self.clock())  # type: ignore[arg-type]

    def cancel(self) -> None:
        """Drop a pending value without showing it."""
        with self._lock:
            self._cancel_timer()
            self._pending = _UNSET

    def _fire(self, timer: threading.Timer) -> None:
        with self._lock:
            if self._timer is not timer:
                return  # cancelled, or replaced after a flush: a newer timer owns the pending value
            self._timer = None
            if self._pending is _UNSET:
                return
            value, self._pending = self._pending, _UNSET
            self._emit(value, self.clock())  # type: ignore[arg-type]

    def _emit(self, value: T, now: float) -> None:
        # Called with the lock held: updates reach the callback one at a time and in order.
        self._last = now
        self.calls += 1
        self.callback(value)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
