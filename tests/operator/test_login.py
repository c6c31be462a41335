"""The operator's kopf session bounds kopf's requests in flight, not its watch streams: a real
HTTP server (aiohttp's, on loopback) counts how many requests it holds at once."""

from __future__ import annotations

import asyncio

import kopf
from aiohttp import web
from mlops_operator import handlers


async def _peaks(concurrency: int, paths: list[str]) -> tuple[int, list[int]]:
    """(most requests the server held at once, statuses) for ``paths`` sent all at once."""
    held = {"now": 0, "peak": 0}

    async def slow(request: web.Request) -> web.Response:
        held["now"] += 1
        held["peak"] = max(held["peak"], held["now"])
        await asyncio.sleep(0.2)
        held["now"] -= 1
        return web.json_response({"kind": "Status"})

    app = web.Application()
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    info = kopf.ConnectionInfo(server=f"http://127.0.0.1:{port}")
    session = handlers.bounded_session(info, concurrency)
    try:

        async def get(path: str) -> int:
            async with session.get(f"{info.server}{path}") as response:
                await response.json()
                return response.status

        statuses = await asyncio.gather(*(get(p) for p in paths))
    finally:
        await session.close()
        await runner.cleanup()
    return held["peak"], list(statuses)


def test_kopf_requests_in_flight_are_bounded() -> None:
    """Unbounded, a burst of new objects opened a TLS connection per request (asyncio gives
    each a 256 KiB read buffer): most of the operator's peak RSS at a thousand objects."""
    peak, statuses = asyncio.run(_peaks(4, ["/slow"] * 20))
    assert statuses == [200] * 20
    assert peak == 4


def test_watch_streams_are_not_counted_against_the_bound() -> None:
    """kopf holds a watch connection per resource and namespace for good: counted, enough
    watched namespaces would leave no slot for a single PATCH."""
    peak, statuses = asyncio.run(_peaks(2, ["/slow?watch=true"] * 6 + ["/slow"] * 2))
    assert statuses == [200] * 8
    assert peak == 8
