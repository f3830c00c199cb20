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


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """Tell Jupyter where the extension's app is (imported only by a Jupyter server)."""
    from .app import MixVLLMApp

    return [{"module": "mixvllm_nb.extension", "app": MixVLLMApp}]
