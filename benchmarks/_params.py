"""The one policy configuration every library is set up to match.

Only the happy path is measured (the wrapped call never fails, never times
out, never meets a full bulkhead or an open breaker), so these values mostly
matter for honesty: each contender is configured as a user would configure it
for the same job, not stripped down to nothing.
"""

from __future__ import annotations

from typing import Final

CATEGORIES: Final = (
    "retry",
    "breaker",
    "bulkhead",
    "timeout",
    "fallback",
    "hedge",
    "stack",
)
"""Report order of the categories; ``bare`` is reported on its own."""

CATEGORY_TITLES: Final = {
    "retry": "Retry (3 attempts, exponential backoff 0.1 s x2, cap 5 s)",
    "breaker": "Circuit breaker (failure threshold 5, reset 30 s)",
    "bulkhead": "Bulkhead (max 10 concurrent)",
    "timeout": "Timeout (2 s)",
    "fallback": "Fallback (value None on failure)",
    "hedge": "Hedge (delay 50 ms, 1 hedged call)",
    "stack": "Stack: timeout + retry + breaker + bulkhead",
}

RETRY_ATTEMPTS: Final = 3
"""Total attempts, including the first call."""
BACKOFF_INITIAL_S: Final = 0.1
BACKOFF_BASE: Final = 2.0
BACKOFF_MAX_S: Final = 5.0

FAILURE_THRESHOLD: Final = 5
RESET_TIMEOUT_S: Final = 30.0

MAX_CONCURRENT: Final = 10

TIMEOUT_S: Final = 2.0

HEDGE_DELAY_S: Final = 0.05
MAX_HEDGED: Final = 1
