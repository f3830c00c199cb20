"""The Jupyter server extension: an authenticated streaming OpenAI proxy, a servers API, chat terminals.

Routes (all behind Jupyter's authentication and the ``mixvllm`` auth resource):

- ``/mixvllm/api/servers``: GET the registered servers, POST a config to start one;
- ``/mixvllm/api/servers/<name>``: GET its status, DELETE to stop it;
- ``/mixvllm/api/servers/<name>/terminal``: POST to open a Jupyter terminal running ``mixvllm-chat``;
- ``/mixvllm/servers/<name>/v1/...``, ``/health``, ``/metrics``: the OpenAI API of that server.

This package stays light to import: kernels use :mod:`mixvllm_nb.extension.from_kernel` without tornado's handlers.
"""

from __future__ import annotations

from typing import Any


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Register the extension's routes on a Jupyter server (called by jupyter_server)."""
    from .extension import load

    load(serverapp)


# The name jupyter_server 1.x looked for.
load_jupyter_server_extension = _load_jupyter_server_extension
