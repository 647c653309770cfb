"""One retry policy for requests to an OpenAI-compatible API (evals/api.py sync, serve/cascade.py async).

Retried: connection errors and timeouts (the exception types the caller names) and the statuses in
RETRY_STATUS; anything else (a wrong key, a bad request) is returned at once, as it will not get better.
Between attempts: the server's Retry-After when its reply has one, else exponential backoff. Built on tenacity
(runtime env only: import this module where the call is made, not at the top of core-env code).
"""

from __future__ import annotations

import math
from typing import Any

from tenacity import (
    RetryCallState,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential,
)
from tenacity.wait import wait_base

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


def retry_after(response: Any) -> float | None:
    """Seconds from a reply's Retry-After header (seconds form; an HTTP date or none: None)."""
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


def retryable(response: Any) -> bool:
    return response.status_code in RETRY_STATUS


class WaitRetryAfter(wait_base):
    """The last reply's Retry-After if it had one, else `fallback`; never more than `cap` seconds."""

    def __init__(self, fallback: wait_base, cap: float = math.inf) -> None:
        self.fallback = fallback
        self.cap = cap

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        told = None if outcome is None or outcome.failed else retry_after(outcome.result())
        return min(self.cap, self.fallback(retry_state) if told is None else told)


def policy(
    *,
    attempts: int,
    transient: tuple[type[BaseException], ...],
    backoff_s: float,
    max_backoff_s: float = math.inf,
    budget_s: float | None = None,
) -> dict[str, Any]:
    """tenacity keyword arguments for `Retrying` / `AsyncRetrying` around one attempt that returns the reply.

    At most `attempts` tries; waits backoff_s, 2 x backoff_s, … (or Retry-After), each at most `max_backoff_s`;
    with `budget_s`, no attempt starts once the wait before it would end past the budget (counted from the first
    attempt's start). The attempt itself must keep within what is left of the budget (its own timeout)."""
    stop = stop_after_attempt(attempts)
    if budget_s is not None:
        stop = stop | stop_before_delay(budget_s)
    return {
        "retry": retry_if_exception_type(transient) | retry_if_result(retryable),
        "wait": WaitRetryAfter(wait_exponential(multiplier=backoff_s, max=max_backoff_s), cap=max_backoff_s),
        "stop": stop,
    }
