"""The pacer hands out one turn per event-loop iteration, in arrival order, so a
callback that becomes ready meanwhile (a SIGCHLD, a control request) runs before
the second of many queued HTTP requests."""

from __future__ import annotations

import asyncio

from sockvisor.http.pacing import Pacer


def test_one_turn_per_iteration_and_others_run_in_between():
    order: list[str] = []

    async def request(pacer: Pacer, name: str) -> None:
        await pacer.turn()
        order.append(name)

    async def main() -> None:
        pacer = Pacer()
        tasks = [asyncio.ensure_future(request(pacer, f"r{i}")) for i in range(5)]
        await asyncio.sleep(0)          # all five queued
        loop = asyncio.get_running_loop()
        loop.call_soon(order.append, "reaper")   # ready now, behind nothing but a turn
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert order[:5] != ["r0", "r1", "r2", "r3", "r4"]
    assert order.index("reaper") <= 1
    assert [x for x in order if x != "reaper"] == ["r0", "r1", "r2", "r3", "r4"]


def test_a_cancelled_request_gives_its_turn_away():
    async def main() -> list[str]:
        pacer = Pacer()
        order: list[str] = []

        async def request(name: str) -> None:
            await pacer.turn()
            order.append(name)
        first = asyncio.ensure_future(request("gone"))
        second = asyncio.ensure_future(request("kept"))
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.wait_for(second, 1)
        return order
    assert asyncio.run(main()) == ["kept"]
