"""Seed 004's model-garden REST API inside Jupyter: load, unload, status, generate and chat under ``/mixvllm/garden``.

A client written for model_garden works with its base URL changed to ``<jupyter>/mixvllm/garden`` and
Jupyter's token as its credential (``Authorization: token <t>`` or ``Bearer <t>``: the openai package
sends its ``api_key`` as Bearer). "The loaded model" is one server this API manages, named ``garden``:
every user of this Jupyter server sees the same one, as model_garden's one service did. Loading another
config replaces it, loading the same one reuses it, and it stops with the Jupyter server. A load whose
config a running server already serves (a kernel's, under another name) uses that one instead of loading
the model twice; unloading then only lets go of it: a server the garden did not start is not its to stop.

Generate and chat bodies may carry images (URLs, base64 data URLs, several per message, or files uploaded as
``multipart/form-data``: see uploads.py), so their limit is ``MixVLLM.garden_max_body_bytes``, not the proxy's
``max_body_bytes``, and each image is held to ``MixVLLM.garden_max_image_bytes``; the refusal itself (413 as
the body arrives, the rest drained) is the proxy's.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError

from .. import api
from ..config import ServeConfig, config_from_dict
from ..errors import ConfigError, MixVLLMError, NameTakenError
from ..process import registry
from ..process.registry import state_dir
from ..process.view import server_view
from .api_handlers import rest_view
from .base import MixvllmHandler, OpenAIError
from .policy import check_remote_config
from .proxy import DRAIN_BYTES, ProxyHandler, upstream_headers
from .uploads import request_body, with_images
from .upstream import Upstream, UpstreamError

GARDEN = "garden"
PREFIX = "/mixvllm/garden"
_ENDED = ("exited", "crashed", "stopped")
# web_app.settings key: the name of the server the garden uses now (GARDEN, or a reused server's name).
_CURRENT = "mixvllm_garden"


def garden_routes() -> list[tuple[str, type]]:
    """Return seed 004's routes under ``/mixvllm/garden`` (its chat also at ``/v1/...``, as its examples call it)."""
    return [
        (rf"{PREFIX}/api/v1/inference/load", LoadHandler),
        (rf"{PREFIX}/api/v1/inference/unload", UnloadHandler),
        (rf"{PREFIX}/api/v1/inference/status", StatusHandler),
        (rf"{PREFIX}/api/v1/inference/generate", GenerateHandler),
        (rf"{PREFIX}/api/v1/chat/completions", ChatHandler),
        (rf"{PREFIX}/v1/chat/completions", ChatHandler),
    ]


def garden_config(body: dict[str, Any], root: Path) -> ServeConfig:
    """Return the garden server's config from a load body (seed 004's flat one, or any accepted schema).

    A relative ``model_path`` that exists under Jupyter's root folder is that folder (the engine does not
    run there); one written as a path (``./``, ``../``, ``/``, ``~``) must exist; anything else is a hub id.
    """
    body = dict(body)
    path = body.get("model_path")
    if isinstance(path, str) and path.strip():
        where = Path(path).expanduser()
        found = where if where.is_absolute() else root / where
        if found.exists():
            body["model_path"] = str(found.resolve())
        elif path.startswith((".", "/", "~")):
            raise ConfigError(f"model_path: {path!r} does not exist (relative paths are under Jupyter's root "
                              f"folder, {root}); give an existing folder or a Hugging Face model id")
    config = config_from_dict(body, source="request body")
    if config.server.name not in (None, GARDEN):
        raise ConfigError(f"server.name: the garden serves one model, named {GARDEN!r}; leave the name out "
                          "(other servers: POST /mixvllm/api/servers)")
    return config.model_copy(update={"server": config.server.model_copy(update={"name": GARDEN})})


def _serve(config: ServeConfig) -> api.ServeResult:
    """Start the garden server, reusing it for the same config and replacing it for another (seed 004's load)."""
    try:
        return api.serve(config, wait=False, owner_kind="jupyter-server")
    except NameTakenError:
        return api.serve(config, wait=False, replace=True, owner_kind="jupyter-server")


def current_record(settings: dict[str, Any]) -> registry.ServerRecord | None:
    """Return the record of the server the garden uses now (None: no model is loaded)."""
    for name in (settings.get(_CURRENT), GARDEN):
        if name and (record := registry.get(name, missing_ok=True)) is not None:
            return record
    return None


def model_path(record: registry.ServerRecord) -> str:
    """Return the model as the load named it (the record's resolved model when it named none)."""
    model = (record.config or {}).get("model") or {}
    return model.get("name") or record.model


class LoadHandler(MixvllmHandler):
    """``POST`` seed 004's load body: the garden server is started (or reused) and ready when this answers."""

    @web.authenticated
    @authorized(action="execute")  # as POST /mixvllm/api/servers: a model server runs code here
    async def post(self) -> None:
        """Answer ``{success, message, model_path, is_loaded, outcome, server}`` (202 with ``?wait=false``)."""
        if not self.authorizer.is_authorized(self, self.current_user, "execute", "kernels"):
            raise OpenAIError(403, "loading a model starts a server that runs code on this machine: it needs the "
                              "permission to start kernels (execute on kernels)", code="forbidden")
        body = self.json_object_body('{"model_path": "./models/my-model", "tensor_parallel_size": 1}')
        wait = self.get_query_argument("wait", "true").lower() not in ("0", "false", "no")
        root = Path(self.settings.get("server_root_dir", ".")).expanduser()
        loop = IOLoop.current()
        try:
            config = garden_config(body, root)
            check_remote_config(config, allowed_env=set(self.state.config.allowed_env_vars),
                                log_roots=[root, state_dir()])
            result = await loop.run_in_executor(None, _serve, config)  # may convert the default model
            name = result.server.name
            self.settings[_CURRENT] = name
            if result.outcome == "Launched":
                self.state.servers[name] = result.server
            if wait:
                await self._until_ready(result)
        except ConfigError as exc:
            raise OpenAIError(400, str(exc), code="invalid_config") from None
        except MixVLLMError as exc:
            raise OpenAIError(409, str(exc), code="start_failed") from None
        record = registry.get(name)
        view = rest_view(record, self.base_url, self.state.servers.get(name))
        loaded = view["state"] == "ready"
        self.set_status(200 if loaded else 202)
        self.finish(json.dumps({"success": True, "message": result.describe(), "model_path": model_path(record),
                                "is_loaded": loaded, "outcome": result.outcome, "server": view}))

    async def _until_ready(self, result: api.ServeResult) -> None:
        if result.outcome == "Launched":
            try:
                await IOLoop.current().run_in_executor(None, result.server.wait_until_ready)
            except MixVLLMError:
                self.state.servers.pop(result.server.name, None)  # it stopped itself; the error says why
                raise
            return
        # Reused: maybe still loading for another request; its owner's heartbeat updates the record.
        deadline, name = time.monotonic() + result.server.config.startup_timeout, result.server.name
        while True:
            record = registry.get(name, missing_ok=True)
            state = server_view(record, self.state.servers.get(name))["state"] if record else "stopped"
            if state == "ready":
                return
            if state in _ENDED:
                raise OpenAIError(409, f"the garden's server ended while loading ({state}); see GET "
                                  f"{PREFIX}/api/v1/inference/status and its log", code="start_failed")
            if time.monotonic() > deadline:
                raise OpenAIError(504, "the garden's model is still loading; ask GET "
                                  f"{PREFIX}/api/v1/inference/status", code="load_timeout")
            await asyncio.sleep(0.5)


class UnloadHandler(MixvllmHandler):
    """``POST``: the garden's server is stopped (a reused one is only let go of; nothing loaded: nothing done)."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        """Answer ``{success, is_loaded: false, message}``."""
        record = current_record(self.settings)
        self.settings[_CURRENT] = None
        if record is None:
            message = "no model was loaded"
        elif record.name != GARDEN:
            message = f"the garden let go of {record.name} (not stopped: the garden did not start it)"
        else:
            message = await IOLoop.current().run_in_executor(None, api.stop_server, GARDEN)  # waits for the tree
            self.state.servers.pop(GARDEN, None)
        self.finish(json.dumps({"success": True, "is_loaded": False, "message": message}))


class StatusHandler(MixvllmHandler):
    """``GET``: whether a model is loaded, which, since when the answer holds."""

    @web.authenticated
    @authorized
    def get(self) -> None:
        """Answer ``{is_loaded, model_path, timestamp}``, and the server's ``state`` and ``server`` view."""
        record = current_record(self.settings)
        view = rest_view(record, self.base_url, self.state.servers.get(record.name)) if record else None
        self.finish(json.dumps({
            "is_loaded": bool(view and view["state"] == "ready"),
            "model_path": model_path(record) if record else None,
            "timestamp": datetime.now().isoformat(timespec="seconds"),
            "state": view["state"] if view else "unloaded",
            "server": view,
        }))


@web.stream_request_body
class _GardenBodyHandler(ProxyHandler):
    """The proxy's streaming relay and 413, with the garden's own body limit; ``POST`` only."""

    SUPPORTED_METHODS = ("POST",)  # type: ignore[assignment]

    async def prepare(self) -> None:  # type: ignore[override]
        """Authenticate (Jupyter), then refuse a declared body over the garden's limit before reading any."""
        self._chunks = []
        await MixvllmHandler.prepare(self)
        declared = self.request.headers.get("Content-Length", "")
        limit = self.state.config.garden_max_body_bytes
        # Tornado's own limit (Jupyter's max_body_size) must not answer first: we refuse, then read and drop.
        room = max(limit + DRAIN_BYTES, int(declared) if declared.isdigit() else 0)
        self.request.connection.set_max_body_size(room)  # type: ignore[union-attr]
        if declared.isdigit() and int(declared) > limit:
            self._refuse(f"request body of {int(declared)} bytes (Content-Length) is over the limit of {limit} "
                         "bytes (MixVLLM.garden_max_body_bytes)")

    def data_received(self, chunk: bytes) -> None:
        """Keep the body as it arrives; past the garden's limit, refuse it and drop the rest (the proxy's way)."""
        limit = self.state.config.garden_max_body_bytes
        if not self._refused and self._received + len(chunk) > limit:
            self._received += len(chunk)
            self._refuse(f"request body (chunked) went over the limit of {limit} bytes "
                         "(MixVLLM.garden_max_body_bytes); the rest is dropped")
            return
        if self._refused:
            super().data_received(chunk)  # counts and drains
            return
        self._received += len(chunk)
        self._chunks.append(chunk)

    async def post(self) -> None:  # type: ignore[override]
        """Answer the request (after a 413, only finish reading the dropped body)."""
        if not self._refused:
            await self._authorized_answer()
        elif not self._finished:
            self.finish()

    @web.authenticated
    @authorized
    async def _authorized_answer(self) -> None:
        await self.answer(await self._garden_record(), self._json_body())

    async def answer(self, record: registry.ServerRecord, body: dict[str, Any]) -> None:
        raise NotImplementedError

    async def _garden_record(self) -> registry.ServerRecord:
        record = current_record(self.settings)
        if record is None:
            raise OpenAIError(404, f"no model is loaded; POST {PREFIX}/api/v1/inference/load first",
                              code="model_not_loaded")
        return await self._usable_record(record.name)

    def _json_body(self) -> dict[str, Any]:
        """Return the body as JSON; uploaded images (multipart) are kept for the handler in ``self.uploaded``."""
        body, self.uploaded = request_body(self.request.headers.get("Content-Type", ""), b"".join(self._chunks),
                                           self.state.config.garden_max_image_bytes)
        return body


class ChatHandler(_GardenBodyHandler):
    """``POST`` an OpenAI chat request: relayed to the garden's server (streamed too), for the loaded model."""

    async def answer(self, record: registry.ServerRecord, body: dict[str, Any]) -> None:
        """Relay the request (the seed's clients send any model name: "ignored by vLLM")."""
        body = with_images(body, self.uploaded)
        body["model"] = record.served_model_name
        self._chunks = [json.dumps(body).encode()]
        await self._forward(record.name, "v1/chat/completions")


class GenerateHandler(_GardenBodyHandler):
    """``POST {prompt, max_tokens, temperature, top_p, stream, images?}``: seed 004's generate on the garden."""

    async def answer(self, record: registry.ServerRecord, body: dict[str, Any]) -> None:
        """Answer ``{text, usage, finish_reason}``; with ``stream``, server-sent events of ``{text, finish_reason}``."""
        prompt, images = body.pop("prompt", None), body.pop("images", None) or []
        if not isinstance(prompt, str):
            raise OpenAIError(400, 'request body: "prompt" must be a string, as in {"prompt": "Once upon a time"}',
                              code="invalid_request")
        if not isinstance(images, list) or not all(isinstance(url, str) for url in images):
            raise OpenAIError(400, 'request body: "images" must be a list of URLs or data: URLs (strings)',
                              code="invalid_request")
        images = [*images, *self.uploaded]
        stream = bool(body.pop("stream", False))
        request = {**body, "model": record.served_model_name, "stream": stream}
        if images:  # an image needs the model's chat template: one user message, text then images
            path = "v1/chat/completions"
            parts = [{"type": "text", "text": prompt}] + [{"type": "image_url", "image_url": {"url": url}}
                                                          for url in images]
            request["messages"] = [{"role": "user", "content": parts}]
        else:
            path, request["prompt"] = "v1/completions", prompt
        # Its own task, so that a client that leaves cancels it (and the engine stops generating).
        self._pump = asyncio.ensure_future(self._generate(record, path, request))
        await asyncio.wait([self._pump])
        if not self._pump.cancelled():
            self._pump.result()

    async def _generate(self, record: registry.ServerRecord, path: str, request: dict[str, Any]) -> None:
        headers = upstream_headers({"Content-Type": "application/json"}, record.api_key)
        try:
            upstream = await Upstream.open("POST", f"{record.base_url.rstrip('/')}/{path}", headers,
                                           json.dumps(request).encode(),
                                           connect_timeout=self.state.config.connect_timeout)
        except (UpstreamError, OSError) as exc:
            raise OpenAIError(502, f"the garden's server at {record.base_url} could not be reached: "
                              f"{type(exc).__name__}: {exc}", code="upstream_unreachable") from None
        try:
            if upstream.status != 200 or not request["stream"]:
                await self._answer_whole(upstream)
            else:
                await self._answer_events(upstream)
        finally:
            upstream.close()

    async def _answer_whole(self, upstream: Upstream) -> None:
        raw = b"".join([data async for data in upstream.body()])
        try:
            answer = json.loads(raw)
        except ValueError:
            raise OpenAIError(502, f"the garden's server answered {upstream.status} without JSON: {raw[:200]!r}",
                              code="upstream_invalid") from None
        if upstream.status != 200:  # the engine's own error (a max_tokens too large...), as it said it
            self.set_status(upstream.status)
            self.finish(json.dumps(answer))
            return
        choice = (answer.get("choices") or [{}])[0]
        self.finish(json.dumps({"text": _text_of(choice), "usage": answer.get("usage"),
                                "finish_reason": choice.get("finish_reason")}))

    async def _answer_events(self, upstream: Upstream) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        pending = b""
        try:
            await self.flush()
            async for data in upstream.body():
                pending += data.replace(b"\r\n", b"\n")  # JSON events hold no raw newline
                *events, pending = pending.split(b"\n\n")
                out = [_translated(event) for event in events]
                if text := "".join(filter(None, out)):
                    self.write(text)
                    await self.flush()  # what the engine gave leaves now
        except StreamClosedError:
            return
        except (UpstreamError, OSError) as exc:
            self.log.warning("mixvllm: the garden's server broke off a generate stream: %s", exc)
        self.finish()


def _text_of(choice: dict[str, Any]) -> str:
    """Return the text of a completion choice, a chat choice or a chat delta."""
    if "text" in choice:
        return choice.get("text") or ""
    message = choice.get("message") or choice.get("delta") or {}
    return message.get("content") or ""


def _translated(event: bytes) -> str | None:
    """Return one OpenAI server-sent event as seed 004's ``data: {text, finish_reason}`` events (None: nothing)."""
    out = []
    for line in event.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            continue
        try:
            data = json.loads(payload)
        except ValueError:
            continue
        if "error" in data:  # an engine error mid-stream reaches the client as it was
            out.append(json.dumps({"error": data["error"], "text": "", "finish_reason": "error"}))
        for choice in data.get("choices") or []:
            out.append(json.dumps({"text": _text_of(choice), "finish_reason": choice.get("finish_reason")}))
    return "".join(f"data: {item}\n\n" for item in out) or None
