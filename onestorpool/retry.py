"""The one retry policy of the add-on (tenacity), for StorPool and oned calls alike.

Only errors that say they are transient are retried (``exc.transient``), with jittered
exponential backoff, a bounded number of attempts and a deadline kept below oned's action
timeout. The first attempt runs without importing tenacity: drivers start fast and pay for
the retry machinery only when a call actually failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    return bool(getattr(exc, "transient", False))


class RetryPolicy:
    """``attempts``: total tries including the first (``STORPOOL_RETRIES``); ``deadline``:
    seconds from the first try after which no new try starts; ``sleep`` is injectable."""

    # A plain class: dataclasses and logging would cost drivers ~15 ms of start-up.
    __slots__ = ("attempts", "deadline", "initial_wait", "max_wait", "sleep")

    def __init__(self, attempts: int = 10, deadline: float = 60.0, initial_wait: float = 0.1,
                 max_wait: float = 5.0, sleep: Callable[[float], None] = time.sleep):
        self.attempts, self.deadline = attempts, deadline
        self.initial_wait, self.max_wait, self.sleep = initial_wait, max_wait, sleep

    def __repr__(self) -> str:
        return f"RetryPolicy(attempts={self.attempts}, deadline={self.deadline})"

    def call(self, func: Callable[[], T], what: str = "call") -> T:
        """``func()``, retried on transient errors; the last error is re-raised as is."""
        started = time.monotonic()
        try:
            return func()
        except Exception as exc:
            if not is_transient(exc) or self.attempts <= 1:
                raise
            first_error = exc
        return self._retry(func, what, started, first_error)

    def _retry(self, func: Callable[[], T], what: str, started: float,
               first_error: BaseException) -> T:
        import logging

        import tenacity  # only once something failed

        log = logging.getLogger("onestorpool.retry")
        log.warning("%s failed (%s), retrying", what, first_error)
        remaining = max(0.0, self.deadline - (time.monotonic() - started))
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_transient),
            stop=tenacity.stop_after_attempt(self.attempts - 1)
            | tenacity.stop_after_delay(remaining),
            wait=tenacity.wait_random_exponential(multiplier=self.initial_wait,
                                                  max=self.max_wait),
            sleep=self.sleep,
            before_sleep=lambda state: log.warning(
                "%s: attempt %d failed (%s), retrying", what, state.attempt_number + 1,
                state.outcome.exception() if state.outcome else "?"),
            reraise=True,
        )
        self.sleep(self.initial_wait)  # the wait after the first, untracked, attempt
        return retrying(func)


NO_RETRY = RetryPolicy(attempts=1)
