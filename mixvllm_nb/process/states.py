"""The states a server can be in, one enum for every front (they compare equal to their strings)."""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """Where a server is in its life: new -> starting -> ready (<-> unhealthy) -> stopped, exited or crashed."""

    NEW = "new"
    STARTING = "starting"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    EXITED = "exited"
    CRASHED = "crashed"
    STOPPED = "stopped"

    @property
    def live(self) -> bool:
        """True while the server's process runs (starting, ready or unhealthy)."""
        return self in LIVE_STATES

    @property
    def ended(self) -> bool:
        """True once the server is gone (stopped, exited or crashed)."""
        return self in ENDED_STATES


LIVE_STATES = frozenset({State.STARTING, State.READY, State.UNHEALTHY})
ENDED_STATES = frozenset({State.STOPPED, State.EXITED, State.CRASHED})
