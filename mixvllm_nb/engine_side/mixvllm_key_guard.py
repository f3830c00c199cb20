"""The API key on every route of a vLLM server, not only under ``/v1``.

vLLM checks ``VLLM_API_KEY`` only for paths under ``/v1``, ``/v2``, ``/inference`` and ``/cohere``:
``/invocations`` runs the same inference with no key, and ``/tokenize``, ``/metrics`` and ``/openapi.json``
answer anyone, so on a shared machine every local user reaches the model through its loopback port.
mixvllm_nb starts vLLM with ``--middleware mixvllm_key_guard.KeyEverywhere`` and this folder on
``PYTHONPATH``: every request then needs the key, except ``GET /health`` (liveness tells nothing).

Standard library only, and not inside the ``mixvllm_nb`` package: the engine may run in another Python
environment (``binary_path``), which has vLLM but not mixvllm_nb.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os

OPEN_PATHS = frozenset({"/health"})


class KeyEverywhere:
    """A pure ASGI middleware: a request without ``Authorization: Bearer <VLLM_API_KEY>`` gets 401."""

    def __init__(self, app) -> None:  # noqa: ANN001 (an ASGI app; no starlette import needed)
        self.app = app
        key = os.environ.get("VLLM_API_KEY", "")
        self.key_hash = hashlib.sha256(key.encode()).digest() if key else None

    def allowed(self, scope: dict) -> bool:
        """Return True for a request that carries the key, or for a liveness probe."""
        if self.key_hash is None or scope.get("method") == "OPTIONS":  # no key set: vLLM's own rules apply
            return True
        path = scope.get("path", "").removeprefix(scope.get("root_path", ""))
        if path in OPEN_PATHS:
            return True
        headers = dict(scope.get("headers") or [])
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        given = hashlib.sha256(token.encode()).digest()
        return scheme.lower() == "bearer" and hmac.compare_digest(given, self.key_hash)

    async def __call__(self, scope: dict, receive, send) -> None:  # noqa: ANN001
        if scope["type"] not in ("http", "websocket") or self.allowed(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"error": {"message": "Unauthorized: this route needs the server's API key",
                                     "type": "invalid_request_error", "code": 401}}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})
