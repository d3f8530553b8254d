"""Loopback ports and aiohttp apps on them: what the dev UI's proxy, the worker's metrics
endpoint and the tests' receivers share."""

from __future__ import annotations

import socket

from aiohttp import web


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for tests; another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def listen(
    app: web.Application, host: str, port: int, *, reuse_address: bool | None = None
) -> web.AppRunner:
    """Serves `app` on host:port until the runner's cleanup(); a port already taken raises
    OSError and leaves nothing running."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=reuse_address).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
