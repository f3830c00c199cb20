"""The proxy's routes: ``/mixvllm/servers/<route>/v1/...`` to whichever member server serves the body's ``model``.

Only the choice of server is here. Once chosen, the request takes the proxy's own single-server path
(:meth:`.proxy.ProxyHandler._usable_record` and ``_relay``): the same streaming, client-disconnect
cancellation, body limit, headers and errors. A member's base model is known without asking it (its
record, or the route's copy when the member has ended, whose requests then answer 502 like a dead
server's); an adapter is found by asking the members' ``/v1/models``, only when no base model matched.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from ..process import registry, routes
from .base import OpenAIError
from .upstream import Upstream, UpstreamError

if TYPE_CHECKING:
    from .proxy import ProxyHandler

log = logging.getLogger("mixvllm_nb")
# What a route forwards: the requests that name a model, and the merged model list. A server's
# health and metrics are its own: they are asked of the server, by its name.
ROUTED_PATHS = ("v1/completions", "v1/chat/completions", "v1/embeddings")


def route_named(name: str) -> dict[str, Any] | None:
    """Return the route called ``name``, or None (no such route, or a server has that name: the server wins)."""
    route = routes.get_route(name, missing_ok=True)
    if route is None or registry.get(name, missing_ok=True) is not None:
        return None
    return route


async def relay_route(handler: ProxyHandler, route: dict[str, Any], path: str) -> None:
    """Answer one request to a route: the merged model list, or the request relayed to the model's server."""
    name = route["name"]
    if path == "v1/models":
        await _answer_models(handler, route)
        return
    if path not in ROUTED_PATHS:
        servers = ", ".join(route["servers"])
        raise OpenAIError(404, f"route {name!r} forwards {', '.join(ROUTED_PATHS)} and v1/models; ask a server "
                          f"for its {path} at /mixvllm/servers/<server>/{path} (servers: {servers})",
                          code="path_not_routed")
    model = _requested_model(handler._chunks, name)
    member = await _member_for(handler, route, model)
    record = registry.get(member, missing_ok=True)
    if record is None:
        raise OpenAIError(502, f"server {member!r} (behind route {name!r}, serving {model!r}) is not running "
                          "(stopped); start it again, or change the route (%vllm_route)", code="server_dead")
    await handler._relay(await handler._usable_record(member, record), path)


def _requested_model(chunks: list[bytes], route: str) -> str:
    try:
        body = json.loads(b"".join(chunks) or b"null")
    except ValueError as exc:
        raise OpenAIError(400, f"request body: invalid JSON: {exc}", code="invalid_json") from None
    model = body.get("model") if isinstance(body, dict) else None
    if not isinstance(model, str) or not model:
        raise OpenAIError(400, f"request body: 'model' is required behind route {route!r}: it chooses the server "
                          "(GET v1/models lists them)", code="missing_model")
    return model


def _base_models(route: dict[str, Any]) -> dict[str, str]:
    """Return each member's base model (served name): from its record, else the route's copy."""
    models = {}
    for member in route["servers"]:
        record = registry.get(member, missing_ok=True)
        models[member] = record.served_model_name if record is not None else route["models"].get(member, "")
    return models


async def _member_for(handler: ProxyHandler, route: dict[str, Any], model: str) -> str:
    """Return the member that serves ``model``; 404 listing the route's models when none does."""
    base = _base_models(route)
    for member, served in base.items():
        if served == model:
            return member
    listed = await _listed_models(handler, route)
    for member, entries in listed.items():
        if any(entry.get("id") == model for entry in entries):
            return member
    known = dict.fromkeys([*filter(None, base.values()), *(e["id"] for es in listed.values() for e in es)])
    raise OpenAIError(404, f"model {model!r} is not served behind route {route['name']!r}; models: "
                      f"{', '.join(known) or 'none'}", code="model_not_found")


async def _answer_models(handler: ProxyHandler, route: dict[str, Any]) -> None:
    listed = await _listed_models(handler, route)
    if not listed:
        raise OpenAIError(502, f"no server behind route {route['name']!r} answered its model list (servers: "
                          f"{', '.join(route['servers'])})", code="server_dead")
    data, seen = [], set()
    for entry in (entry for entries in listed.values() for entry in entries):
        if entry["id"] not in seen:  # one model served twice is listed once: the first member answers it
            seen.add(entry["id"])
            data.append(entry)
    handler.set_header("Content-Type", "application/json")
    handler.finish(json.dumps({"object": "list", "data": data}))


async def _listed_models(handler: ProxyHandler, route: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Return each running member's ``/v1/models`` entries (adapters included); members that fail are left out."""
    records = [registry.get(member, missing_ok=True) for member in route["servers"]]
    usable = [r for r in records if r is not None and not r.is_dead(ask_cluster=False)]
    timeout = handler.state.config.connect_timeout
    answers = await asyncio.gather(*(_models_of(record, timeout) for record in usable))
    return {record.name: entries for record, entries in zip(usable, answers, strict=True) if entries is not None}


async def _models_of(record: registry.ServerRecord, timeout: float) -> list[dict[str, Any]] | None:
    try:
        data = await asyncio.wait_for(_get_json(record, "v1/models", timeout), timeout)
    except (UpstreamError, OSError, TimeoutError, ValueError) as exc:
        log.info("mixvllm: route member %s did not list its models: %s", record.name, exc)
        return None
    entries = data.get("data") if isinstance(data, dict) else None
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)] if entries else None


async def _get_json(record: registry.ServerRecord, path: str, timeout: float) -> Any:
    """Return the decoded JSON of a 200 answer to a GET (None for another status), with the server's key."""
    from .proxy import upstream_headers

    upstream = await Upstream.open("GET", f"{record.base_url.rstrip('/')}/{path}",
                                   upstream_headers({}, record.api_key), None, connect_timeout=timeout)
    try:
        if upstream.status != 200:
            return None
        return json.loads(b"".join([piece async for piece in upstream.body()]) or b"null")
    finally:
        upstream.close()
