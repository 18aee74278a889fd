"""The one backoff rule every retry follows, and retrying with it."""

from __future__ import annotations

import pytest

from shared.backoff import backoff_s, retrying


def test_backoff_doubles_up_to_its_cap_plus_jitter():
    assert [backoff_s(retry, 0.1, 2.0, 0.0) for retry in (1, 2, 3, 6)] == [0.1, 0.2, 0.4, 2.0]
    assert backoff_s(1, 0.1, 2.0, 0.5) == pytest.approx(0.15)
    assert backoff_s(9, 0.1, 2.0, 1.0) == pytest.approx(2.1)
    assert backoff_s(10_000, 1.0, 15.0) == 15.0  # no overflow however long the failures go on


async def test_retrying_asks_again_after_the_failures_it_expects_and_no_others():
    answers = iter([TimeoutError(), TimeoutError(), "done"])

    async def flaky() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert await retrying(flaky, (TimeoutError,), initial_s=0.001, max_s=0.002) == "done"

    async def broken() -> str:
        raise KeyError("not retried")

    with pytest.raises(KeyError):
        await retrying(broken, (TimeoutError,), initial_s=0.001, max_s=0.002)


async def test_retrying_gives_up_with_the_last_error_once_its_patience_is_spent():
    tries = 0

    async def down() -> None:
        nonlocal tries
        tries += 1
        raise ConnectionError(f"try {tries}")

    with pytest.raises(ConnectionError, match="try"):
        await retrying(down, (ConnectionError,), initial_s=0.01, max_s=0.01, patience_s=0.05)
    assert 2 <= tries <= 10
