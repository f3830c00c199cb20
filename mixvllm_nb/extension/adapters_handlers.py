"""The adapters REST API: ``/mixvllm/api/servers/<name>/adapters`` (list, load) and ``.../adapters/<adapter>`` (unload).

The same calls as ``%vllm_lora`` (:mod:`mixvllm_nb.adapters`), behind Jupyter's authentication. vLLM's own
``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` stay unreachable through the proxy: loading reads
a folder on this machine, so it needs the permission to start a server, which this API checks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.ioloop import IOLoop

from .. import adapters, api
from ..errors import ConfigError, MixVLLMError, ServerNotFoundError
from .base import MixvllmHandler, OpenAIError, answered_as


class _AdaptersBase(MixvllmHandler):
    async def _call(self, name: str, func: Any, *args: Any) -> Any:
        """Run an adapters call off the event loop; its errors become OpenAI-shaped answers."""
        def run() -> Any:
            return func(api.get_server(name), *args)

        with answered_as((ServerNotFoundError, 404, "server_not_found"),
                         (adapters.AdapterNotFoundError, 404, "adapter_not_found"),
                         (ConfigError, 400, "invalid_adapter"), (MixVLLMError, 409, "adapter_failed")):
            return await IOLoop.current().run_in_executor(None, run)


class AdaptersHandler(_AdaptersBase):
    """``GET`` the adapters loaded on a server; ``POST {"name", "path"}`` loads one."""

    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        """Answer ``{"server", "adapters": [{"name", "path", "base"}]}``."""
        found = await self._call(name, adapters.list_adapters)
        self.finish(json.dumps({"server": name, "adapters": found}))

    @web.authenticated
    @authorized(action="execute")  # loading reads any folder this machine's server can read
    async def post(self, name: str) -> None:
        """Load ``{"name", "path"}`` (a relative path is under Jupyter's root folder); 201 with the adapters."""
        # As for starting a server (api_handlers.ServersHandler.post): whoever may not start a kernel may not.
        if not self.authorizer.is_authorized(self, self.current_user, "execute", "kernels"):
            raise OpenAIError(403, "loading an adapter reads files on this machine: it needs the permission "
                              "to start kernels (execute on kernels)", code="forbidden")
        body = self.json_object_body('{"name": "pirate", "path": "adapters/pirate"}')
        adapter, path = body.get("name"), body.get("path")
        if not isinstance(adapter, str) or not isinstance(path, str) or not path.strip():
            raise OpenAIError(400, 'request body: expected {"name": ADAPTER, "path": FOLDER} (both strings)',
                              code="invalid_adapter")
        folder = Path(path).expanduser()
        if not folder.is_absolute():
            folder = Path(self.settings.get("server_root_dir", ".")).expanduser() / folder
        message = await self._call(name, adapters.load_adapter, adapter, folder)
        found = await self._call(name, adapters.list_adapters)
        self.set_status(201)
        self.finish(json.dumps({"server": name, "message": message, "adapters": found}))


class AdapterHandler(_AdaptersBase):
    """``DELETE`` unloads one adapter."""

    @web.authenticated
    @authorized
    async def delete(self, name: str, adapter: str) -> None:
        """Unload the adapter and answer the one-line confirmation."""
        message = await self._call(name, adapters.unload_adapter, adapter)
        self.finish(json.dumps({"server": name, "adapter": adapter, "message": message}))
