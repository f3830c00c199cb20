"""A real MCP server for tests/test_mcp.py, written with the SDK's MCPServer (FastMCP in mcp 1.x).

stdio by default; ``--http PORT`` serves streamable HTTP at ``http://127.0.0.1:PORT/mcp``. Each call is
appended as a JSON line to the file named by ``MCP_CALL_LOG`` (when set), so a test can see what the server
received, not only what the chat showed; the first line, ``(started)``, gives the server's pid.
"""

from __future__ import annotations

import json
import os
import sys

import anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer("mixvllm-test-tools")
# MCP_TOOLS=get_weather,add offers only those (a model forced to call "a tool" then has one choice).
OFFERED = os.environ.get("MCP_TOOLS", "get_weather,add,explode,slow").split(",")
WEATHER_FACT = "sunny, 21 C, wind 7 km/h (station ref ZX-41)"


def _log(tool: str, arguments: dict) -> None:
    path = os.environ.get("MCP_CALL_LOG")
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps({"tool": tool, "arguments": arguments, "pid": os.getpid()}) + "\n")


def get_weather(city: str) -> str:
    """Return today's weather in a city."""
    _log("get_weather", {"city": city})
    return f"Weather in {city}: {WEATHER_FACT}"


def add(a: int, b: int) -> int:
    """Add two whole numbers."""
    _log("add", {"a": a, "b": b})
    return a + b


def explode(reason: str) -> str:
    """Always fail (for the tests of a tool that raises)."""
    _log("explode", {"reason": reason})
    raise RuntimeError(f"exploded on purpose: {reason}")


async def slow(seconds: float) -> str:
    """Answer after ``seconds`` (for the tests of a tool that times out)."""
    _log("slow", {"seconds": seconds})
    await anyio.sleep(seconds)
    return f"slept {seconds} s"


for tool in (get_weather, add, explode, slow):
    if tool.__name__ in OFFERED:
        server.tool()(tool)

if __name__ == "__main__":
    _log("(started)", {})  # the pid, for the tests that check the server is gone after the chat
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
