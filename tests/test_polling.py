"""tests/polling.py, which every test that waits for something relies on: it returns what it waited for, waits out
the errors it is told to, and fails naming what never held, the last error or answer, never passing by itself."""

from __future__ import annotations

import threading

import pytest
from polling import until, until_async


def test_until_returns_the_first_truthy_answer_after_waiting_out_a_connection_error() -> None:
    answers = iter([ConnectionRefusedError("refused"), [], ["up"]])

    def probe() -> list[str]:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert until("the server up", probe, deadline=30, interval=0) == ["up"]


def test_until_fails_naming_what_and_the_last_error() -> None:
    def refused() -> None:
        raise ConnectionRefusedError("refused")

    with pytest.raises(AssertionError, match=r"^the server up: not within 0s \(last error: ConnectionRefusedError: "):
        until("the server up", refused, deadline=0, interval=0)


def test_an_error_not_tolerated_fails_at_once() -> None:
    def broken() -> None:
        raise ValueError("not JSON")

    with pytest.raises(ValueError, match="not JSON"):
        until("an answer", broken, deadline=30, tolerate=(OSError,))


async def test_until_async_awaits_an_async_probe_and_names_its_last_answer() -> None:
    seen: list[int] = []

    async def count() -> list[int]:
        seen.append(len(seen))
        return seen if len(seen) >= 3 else []

    assert await until_async("three polls", count, deadline=30, interval=0) == [0, 1, 2]

    async def none_yet() -> list[int]:
        return []

    with pytest.raises(AssertionError, match=r"^episodes: not within 0s \(last answer: \[\]\)$"):
        await until_async("episodes", none_yet, deadline=0, interval=0)


async def test_until_async_runs_a_blocking_probe_in_a_thread_and_waits_out_its_error() -> None:
    threads: list[int] = []
    failures = iter([OSError("reset")])

    def blocking() -> bool:
        threads.append(threading.get_ident())
        if failure := next(failures, None):
            raise failure
        return True

    assert await until_async("a query answered", blocking, deadline=30, interval=0, in_thread=True) is True
    assert len(threads) == 2
    assert threading.get_ident() not in threads
