"""The example MCP server, for end-to-end tests: ``python mcp_servers.py PATH [stall]``.

With ``stall``, the app's own lifespan hangs on shutdown, as a server stuck in cleanup would,
so that the client has to escalate to SIGTERM.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))

from mcp_server import build_server


@asynccontextmanager
async def stall_on_exit(server: Any) -> AsyncIterator[dict[str, str]]:
    try:
        yield {"app": "state"}
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.sleep(60)


if __name__ == "__main__":
    stall = sys.argv[2:] == ["stall"]
    build_server(sys.argv[1], app_lifespan=stall_on_exit if stall else None).run("stdio")
