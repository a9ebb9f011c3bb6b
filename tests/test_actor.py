"""The Ray actor's call order, without Ray: ``InOrder`` runs the calls handed to it on
one thread of its own, in the order the driver numbered them, whatever order Ray
hands them over in (an async actor takes calls concurrently)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from conveyor.worker.actor import InOrder


def test_calls_run_in_their_numbers_order_on_one_thread_whatever_order_they_come_in():
    ran: list[tuple[int, int]] = []

    def call(number: int) -> int:
        ran.append((number, threading.get_ident()))
        return number * 10

    async def hand_over() -> list[int]:
        calls = InOrder("test")
        # 3 and 1 come before 0: neither may run until 0 has.
        later = [calls.run(n, call, n) for n in (3, 1)]
        await asyncio.sleep(0)
        assert ran == []
        first = [calls.run(n, call, n) for n in (0, 2)]
        return await asyncio.gather(*later, *first)

    assert asyncio.run(hand_over()) == [30, 10, 0, 20]
    assert [number for number, _ in ran] == [0, 1, 2, 3]
    threads = {thread for _, thread in ran}
    assert len(threads) == 1 and threads != {threading.get_ident()}


def test_a_call_that_raises_fails_its_own_outcome_and_the_next_still_runs():
    def broken() -> None:
        raise RuntimeError("the actor's code broke")

    async def hand_over() -> str:
        calls = InOrder("test")
        failed = calls.run(0, broken)
        after = calls.run(1, str, "next")
        with pytest.raises(RuntimeError, match="actor's code broke"):
            await failed
        return await after

    assert asyncio.run(hand_over()) == "next"
