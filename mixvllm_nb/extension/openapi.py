"""The OpenAPI description of every route of the extension, at ``GET /mixvllm/api/openapi.json``.

Written by hand (the handlers are Tornado's, with no schema to derive one from); a test checks that
every route :func:`.app.routes` registers, with each method its handler answers, is described here.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from .base import MixvllmHandler


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any] | str, description: str = "OK") -> dict[str, Any]:
    schema = _ref(schema) if isinstance(schema, str) else schema
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(summary: str, ok: dict[str, Any], *, body: str | None = None, stream: bool = False,
        errors: tuple[int, ...] = (403,)) -> dict[str, Any]:
    """Return one operation: its summary, its request body and its answers (errors in OpenAI's shape)."""
    responses: dict[str, Any] = {"200": ok}
    if stream:
        responses["200"] = copy.deepcopy(ok)
        responses["200"]["content"]["text/event-stream"] = {"schema": {"type": "string"}}
    for status in errors:
        responses[str(status)] = _json("Error", "OpenAI-shaped error")
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if body:
        op["requestBody"] = {"required": body != "LoadRequest",
                             "content": {"application/json": {"schema": _ref(body)}}}
    return op


_NAME = {"name": "name", "in": "path", "required": True,
         "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}}
_OBJECT = {"type": "object", "additionalProperties": True}
_GARDEN_CHAT = _op("Seed 004's OpenAI chat on the loaded model (the body's model is replaced by it); "
                   "images as URLs or data: URLs, up to MixVLLM.garden_max_body_bytes", _json(_OBJECT),
                   body="ChatRequest", stream=True, errors=(400, 403, 404, 413, 502, 503))

PATHS: dict[str, dict[str, Any]] = {
    "/mixvllm/api/openapi.json": {"get": _op("This description", _json(_OBJECT))},
    "/mixvllm/api/servers": {
        "get": _op("Every registered server (no secrets)", _json({"type": "array", "items": _ref("Server")})),
        "post": _op("Start a server from a config (any accepted schema); 202 while it starts, 200 if reused; "
                    "query: reuse, replace, detach", _json("Server"), body="Config", errors=(400, 403, 409)),
    },
    "/mixvllm/api/servers/{name}": {
        "parameters": [_NAME],
        "get": _op("One server's view and URLs", _json("Server"), errors=(403, 404)),
        "delete": _op("Stop the server (or forget an attached one); query: force (a server another live kernel "
                       "owns: 409 without it)", _json(_OBJECT), errors=(400, 403, 404, 409)),
    },
    "/mixvllm/api/servers/{name}/terminal": {
        "parameters": [_NAME],
        "post": _op("Open the terminal chat with this server in a Jupyter terminal", _json(_OBJECT),
                    errors=(403, 404, 409)),
    },
    "/mixvllm/api/servers/{name}/adapters": {
        "parameters": [_NAME],
        "get": _op("The LoRA adapters loaded on the server", _json(_OBJECT), errors=(403, 404)),
        "post": _op('Load a LoRA adapter {"name", "path"}; 201', _json(_OBJECT), body="Adapter",
                    errors=(400, 403, 404, 409)),
    },
    "/mixvllm/api/servers/{name}/adapters/{adapter}": {
        "parameters": [_NAME, {"name": "adapter", "in": "path", "required": True, "schema": {"type": "string"}}],
        "delete": _op("Unload one LoRA adapter", _json(_OBJECT), errors=(403, 404, 409)),
    },
    "/mixvllm/api/servers/{name}/sleep": {
        "parameters": [_NAME, {"name": "level", "in": "query", "required": False,
                               "schema": {"type": "integer", "enum": [1, 2], "default": 1}}],
        "post": _op("Put a vLLM server to sleep (needs CUDA and inference.enable_sleep_mode; 409 says what is "
                    "missing): the server's view with sleeping", _json("Server"), errors=(400, 403, 404, 409)),
    },
    "/mixvllm/api/servers/{name}/wake": {
        "parameters": [_NAME],
        "post": _op("Wake a sleeping vLLM server: the server's view with sleeping", _json("Server"),
                    errors=(403, 404, 409)),
    },
    "/mixvllm/api/routes": {
        "get": _op("Every route (one name in front of several servers)",
                   _json({"type": "array", "items": _ref("Route")})),
        "post": _op("Create a route {name, servers}; 201 (409 if it exists or a server has the name)",
                    _json("Route"), body="RouteRequest", errors=(400, 403, 409)),
    },
    "/mixvllm/api/routes/{name}": {
        "parameters": [_NAME],
        "get": _op("One route", _json("Route"), errors=(403, 404)),
        "put": _op("Create or replace the route with {servers}", _json("Route"), body="RouteServers",
                   errors=(400, 403, 409)),
        "delete": _op("Forget the route (its servers keep running)", _json(_OBJECT), errors=(403, 404)),
    },
    "/mixvllm/servers/{name}/{path}": {
        "parameters": [_NAME, {"name": "path", "in": "path", "required": True, "schema": {
            "type": "string", "enum": ["v1/models", "v1/completions", "v1/chat/completions", "v1/embeddings",
                                       "health", "metrics"]}}],
        "get": _op("Proxy to the server (v1/models, health, metrics), its own key added; for a route, v1/models "
                   "merges its servers' lists", _json(_OBJECT), errors=(403, 404, 405, 502, 503)),
        "post": _op("Proxy to the server (v1/completions, v1/chat/completions, v1/embeddings), streamed; for a "
                    "route, to the server that serves the body's model (400 without one, 404 for an unknown one)",
                    _json(_OBJECT), body="OpenAIRequest", stream=True, errors=(400, 403, 404, 405, 413, 502, 503)),
    },
    "/mixvllm/garden/api/v1/inference/load": {
        "post": _op("Seed 004's load: start (or reuse) the garden's one server; ready when it answers "
                    "(202 at once with ?wait=false); another config replaces it", _json("LoadAnswer"),
                    body="LoadRequest", errors=(400, 403, 409, 504)),
    },
    "/mixvllm/garden/api/v1/inference/unload": {
        "post": _op("Seed 004's unload: stop the garden's server", _json(_OBJECT)),
    },
    "/mixvllm/garden/api/v1/inference/status": {
        "get": _op("Seed 004's status", _json("Status")),
    },
    "/mixvllm/garden/api/v1/inference/generate": {
        "post": _op("Seed 004's generate: {text, usage}; with stream, events of {text, finish_reason}",
                    _json("GenerateAnswer"), body="GenerateRequest", stream=True,
                    errors=(400, 403, 404, 413, 502, 503)),
    },
    "/mixvllm/garden/api/v1/chat/completions": {"post": _GARDEN_CHAT},
    "/mixvllm/garden/v1/chat/completions": {"post": _GARDEN_CHAT},
}

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "properties": {
        "message": {"type": "string"}, "type": {"type": "string"}, "code": {"type": ["string", "null"]}}}}},
    "Server": {"type": "object", "description": "The one server view (no API key), with the proxy's urls",
               "properties": {"name": {"type": "string"}, "state": {"type": "string"}, "model": {"type": "string"},
                              "urls": {"type": "object"}}, "additionalProperties": True},
    "Config": {"type": "object", "description": "A server config as in the YAML file (model, server, inference, "
               "generation_defaults, ...) or a seed's flat form", "additionalProperties": True},
    "Adapter": {"type": "object", "required": ["name", "path"],
                "properties": {"name": {"type": "string"}, "path": {"type": "string"}}},
    "Route": {"type": "object", "properties": {
        "name": {"type": "string"}, "servers": {"type": "array", "items": {"type": "string"}},
        "models": {"type": "object", "description": "each server's base model (served name)",
                   "additionalProperties": {"type": "string"}},
        "urls": {"type": "object", "properties": {"proxy": {"type": "string"}}}}},
    "RouteRequest": {"type": "object", "required": ["name", "servers"], "properties": {
        "name": {"type": "string"}, "servers": {"type": "array", "items": {"type": "string"}, "minItems": 1}}},
    "RouteServers": {"type": "object", "required": ["servers"], "properties": {
        "servers": {"type": "array", "items": {"type": "string"}, "minItems": 1}}},
    "OpenAIRequest": {"type": "object", "description": "An OpenAI API request body", "additionalProperties": True},
    "ChatRequest": {"type": "object", "required": ["messages"], "additionalProperties": True, "properties": {
        "model": {"type": "string", "description": "ignored: the loaded model answers"},
        "messages": {"type": "array", "items": {"type": "object"}}, "max_tokens": {"type": "integer"},
        "temperature": {"type": "number"}, "stream": {"type": "boolean"}}},
    "LoadRequest": {"type": "object", "additionalProperties": True, "properties": {
        "model_path": {"type": "string", "description": "a folder (relative: under Jupyter's root) or a hub id; "
                       "none: the embedded default model"},
        "tensor_parallel_size": {"type": "integer"}, "gpu_memory_utilization": {"type": "number"},
        "quantization": {"type": ["string", "null"]}, "max_model_len": {"type": "integer"},
        "dtype": {"type": "string"}, "trust_remote_code": {"type": "boolean"}}},
    "LoadAnswer": {"type": "object", "properties": {
        "success": {"type": "boolean"}, "message": {"type": "string"}, "model_path": {"type": "string"},
        "is_loaded": {"type": "boolean"}, "outcome": {"type": "string", "enum": ["Launched", "Reused"]},
        "server": _ref("Server")}},
    "Status": {"type": "object", "required": ["is_loaded", "model_path", "timestamp"], "properties": {
        "is_loaded": {"type": "boolean"}, "model_path": {"type": ["string", "null"]},
        "timestamp": {"type": "string", "format": "date-time"}, "state": {"type": "string"},
        "server": {"oneOf": [_ref("Server"), {"type": "null"}]}}},
    "GenerateRequest": {"type": "object", "required": ["prompt"], "additionalProperties": True, "properties": {
        "prompt": {"type": "string"}, "max_tokens": {"type": "integer"}, "temperature": {"type": "number"},
        "top_p": {"type": "number"}, "stream": {"type": "boolean"},
        "images": {"type": "array", "items": {"type": "string"}, "description": "URLs or data: URLs"}}},
    "GenerateAnswer": {"type": "object", "properties": {
        "text": {"type": "string"}, "finish_reason": {"type": ["string", "null"]},
        "usage": {"type": ["object", "null"], "properties": {"prompt_tokens": {"type": "integer"},
                                                             "completion_tokens": {"type": "integer"},
                                                             "total_tokens": {"type": "integer"}}}}},
}


def openapi(base_url: str = "/") -> dict[str, Any]:
    """Return the OpenAPI 3.1 document, its server at Jupyter's base URL (the paths follow it)."""
    from .. import __version__

    return {
        "openapi": "3.1.0",
        "info": {"title": "mixvllm_nb Jupyter server extension", "version": __version__,
                 "description": "Authenticated by Jupyter: a token (Authorization: token|Bearer <token>) or its "
                                "cookie with the XSRF header. Errors are OpenAI's {error: {message, type, code}}."},
        "servers": [{"url": base_url.rstrip("/") or "/"}],
        "security": [{"jupyterToken": []}],
        "paths": copy.deepcopy(PATHS),
        "components": {"schemas": copy.deepcopy(SCHEMAS),
                       "securitySchemes": {"jupyterToken": {"type": "http", "scheme": "bearer"}}},
    }


class OpenAPIHandler(MixvllmHandler):
    """``GET`` the OpenAPI description of every route of the extension."""

    @web.authenticated
    @authorized
    def get(self) -> None:
        """Answer the OpenAPI document (JSON)."""
        self.finish(json.dumps(openapi(self.base_url)))
