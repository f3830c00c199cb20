"""Sleep and wake over REST: ``POST /mixvllm/api/servers/<name>/sleep?level=1|2`` and ``.../wake``.

The same calls as ``%vllm_sleep`` and ``%vllm_wake`` (:mod:`mixvllm_nb.sleep`), which call vLLM's
``/sleep``, ``/wake_up`` and ``/is_sleeping`` with the server's key: those stay unreachable through the proxy.
A server that cannot sleep (another engine, no CUDA GPU, no sleep mode) is a 409 saying what is missing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.ioloop import IOLoop

from .. import api, sleep
from ..errors import ConfigError, MixVLLMError, ServerNotFoundError
from ..process import registry
from .api_handlers import rest_view
from .base import MixvllmHandler, OpenAIError, answered_as


class _SleepBase(MixvllmHandler):
    async def _answer(self, name: str, sleeping: bool, func: Callable[..., str], *args: Any) -> None:
        """Run a sleep call off the event loop (vLLM takes seconds); answer the server's view with ``sleeping``.

        ``func`` checks ``/is_sleeping`` itself before it returns: ``sleeping`` is what it confirmed.
        """
        with answered_as((ServerNotFoundError, 404, "server_not_found"), (ConfigError, 400, "invalid_argument"),
                         (sleep.SleepUnavailableError, 409, "sleep_unavailable"), (MixVLLMError, 409, "sleep_failed")):
            message = await IOLoop.current().run_in_executor(None, lambda: func(api.get_server(name), *args))
        view = rest_view(registry.get(name), self.base_url, self.state.servers.get(name))
        self.finish(json.dumps({**view, "sleeping": sleeping, "message": message}))


class SleepHandler(_SleepBase):
    """``POST`` puts the server to sleep (``?level=1``, the default, or ``2``)."""

    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        """Sleep; answer the server's view with ``sleeping: true``."""
        level = self.get_query_argument("level", "1")
        if level not in ("1", "2"):
            raise OpenAIError(400, f"query argument level={level!r}: use 1 or 2", code="invalid_argument")
        await self._answer(name, True, sleep.sleep_server, int(level))


class WakeHandler(_SleepBase):
    """``POST`` wakes the server."""

    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        """Wake; answer the server's view with ``sleeping: false``."""
        await self._answer(name, False, sleep.wake_server)
