"""A small MCP server to try the chat's tools with: ``python -m mixvllm_nb.mcp_tools.demo_server`` (stdio).

``configs/mcp_servers.yaml`` starts it. Its answers are fixed facts, so what the model was told can be checked.
``--http PORT`` serves streamable HTTP at ``http://127.0.0.1:PORT/mcp`` instead.
"""

from __future__ import annotations

import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("mixvllm-demo")
WEATHER = {"paris": "sunny, 21 C", "london": "light rain, 14 C", "tokyo": "cloudy, 18 C"}


@server.tool()
def get_weather(city: str) -> str:
    """Return today's weather in a city (a fixed demo forecast for Paris, London and Tokyo)."""
    found = WEATHER.get(city.strip().lower())
    return f"{city}: {found}" if found else f"{city}: no forecast (the demo knows Paris, London and Tokyo)"


@server.tool()
def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
