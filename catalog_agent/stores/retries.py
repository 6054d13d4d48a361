"""When the lean S3 path sends a request again, and how long it waits: botocore's retry modes.

``standard`` (botocore 1.44's): transient failures (connection errors, 500/502/503/504,
RequestTimeout ...) and throttling (429, SlowDown ...) are retried up to ``max_attempts``, after
a random wait of up to ``base × 2^(attempt-1)`` seconds (base 1 s for throttling, 50 ms
otherwise, never more than 20 s; an ``x-amz-retry-after`` header raises it), and every retry
spends from a budget shared by the whole command (500 units; a retry costs 14, a throttled one
5; a success gives back what its retries took, or 1): when a server is down for good, the
budget runs out and the command fails fast instead of retrying every request to the end.
``adaptive`` adds botocore's own client-side rate limiter (CUBIC, token bucket), which slows the
sending rate down after throttling responses.

Beyond botocore: a ``RequestTimeTooSkewed`` answer corrects the signing clock from the server's
``Date`` header and retries at once (a pod's clock can drift; botocore fails every request).
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from catalog_agent.errors import Interrupted

TRANSIENT = "transient"
THROTTLING = "throttling"
SKEW = "skew"

TRANSIENT_STATUS = {500, 502, 503, 504}
THROTTLING_STATUS = {429}
TRANSIENT_CODES = {"RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete",
                   "InternalError", "ServiceUnavailable",
                   # the bytes arrived other than sent (callers check their file first)
                   "BadDigest", "XAmzContentSHA256Mismatch"}
THROTTLING_CODES = {"Throttling", "ThrottlingException", "ThrottledException",
                    "RequestThrottledException", "TooManyRequestsException",
                    "ProvisionedThroughputExceededException", "TransactionInProgressException",
                    "RequestLimitExceeded", "BandwidthLimitExceeded", "LimitExceededException",
                    "RequestThrottled", "SlowDown", "PriorRequestNotComplete"}
SKEW_CODES = {"RequestTimeTooSkewed"}

MAX_BACKOFF = 20.0
THROTTLING_BASE = 1.0
TRANSIENT_BASE = 0.05
RETRY_AFTER_EXTRA = 5.0
QUOTA = 500
RETRY_COST = 14
THROTTLING_RETRY_COST = 5
NO_RETRY_INCREMENT = 1


class RetryPolicy:
    """Shared by every request of one command (thread-safe)."""

    def __init__(self, *, mode: str, max_attempts: int, stop: threading.Event | None = None,
                 jitter: Any = random.random) -> None:
        self.max_attempts = max(1, max_attempts)
        self.stop = stop or threading.Event()
        self.skew = 0.0  # seconds the server's clock is ahead of ours
        self._jitter = jitter
        self._lock = threading.Lock()
        self._budget = QUOTA
        self.exhausted = False
        self._limiter = _adaptive_limiter() if mode == "adaptive" else None

    # --- what to retry ---

    @staticmethod
    def classify(status: int | None, code: str) -> str | None:
        """TRANSIENT, THROTTLING, SKEW, or None (not retried). ``status`` None: no response."""
        if status is None:
            return TRANSIENT
        if code in SKEW_CODES:
            return SKEW
        if status in THROTTLING_STATUS or code in THROTTLING_CODES:
            return THROTTLING
        if status in TRANSIENT_STATUS or code in TRANSIENT_CODES:
            return TRANSIENT
        return None

    def acquire(self, kind: str) -> int | None:
        """Spend from the budget for one retry; None when it is spent (do not retry)."""
        cost = THROTTLING_RETRY_COST if kind == THROTTLING else RETRY_COST
        with self._lock:
            if cost > self._budget:
                self.exhausted = True
                return None
            self._budget -= cost
            return cost

    def succeeded(self, cost: int | None) -> None:
        """A request succeeded: give back what its last retry took (or a little)."""
        with self._lock:
            self._budget = min(QUOTA, self._budget + (cost if cost else NO_RETRY_INCREMENT))

    @property
    def budget(self) -> int:
        return self._budget

    # --- how long to wait ---

    def delay(self, attempt: int, kind: str, retry_after: str | None = None) -> float:
        """botocore's standard back-off after attempt ``attempt`` (1-based) failed."""
        base = THROTTLING_BASE if kind == THROTTLING else TRANSIENT_BASE
        wait = self._jitter() * min(base * 2 ** (attempt - 1), MAX_BACKOFF)
        if retry_after:
            try:
                asked = int(retry_after) / 1000.0
            except ValueError:
                asked = -1.0
            if asked >= 0:
                wait = max(wait, min(asked, wait + RETRY_AFTER_EXTRA))
        return wait

    def wait(self, seconds: float) -> None:
        """Sleep, but wake at once for SIGTERM: a back-off must not outlast the grace period."""
        if seconds > 0 and self.stop.wait(seconds):
            raise Interrupted("stopped before the transfer finished")
        if self.stop.is_set():
            raise Interrupted("stopped before the transfer finished")

    # --- adaptive mode's rate limiter ---

    def may_send(self) -> bool:
        """Adaptive mode: take a token from botocore's bucket if there is one, without blocking
        (the client waits on its event loop); always True in standard mode."""
        if self._limiter is None or not self._limiter._enabled:
            return True
        try:
            self._limiter._token_bucket.acquire(1, block=False)
        except Exception:  # noqa: BLE001 - botocore's CapacityNotAvailableError
            return False
        return True

    def after_response(self, throttled: bool) -> None:
        if self._limiter is not None:
            self._limiter.on_receiving_response(throttled=throttled)

    # --- the signing clock ---

    def now(self) -> float:
        return time.time() + self.skew

    def correct_skew(self, server_date: str | None) -> float | None:
        """Adopt the server's clock from its Date header; the new offset, or None if unusable
        (no header, or the offset already in use: retrying would fail the same way)."""
        if not server_date:
            return None
        import email.utils  # here, not at the top: only a skewed clock needs it (start-up time)

        try:
            server = email.utils.parsedate_to_datetime(server_date).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        offset = server - time.time()
        with self._lock:
            if abs(offset - self.skew) < 2.0:
                return None
            self.skew = offset
        return offset


class _ThrottledFlag:
    """botocore's limiter asks a detector; ours is told by the caller."""

    @staticmethod
    def is_throttling_error(throttled: bool = False, **_: Any) -> bool:
        return throttled


def _adaptive_limiter() -> Any:
    """botocore's own adaptive client rate limiter (CUBIC and a token bucket)."""
    from botocore.retries import adaptive, bucket, throttling

    clock = bucket.Clock()
    return adaptive.ClientRateLimiter(
        rate_adjustor=throttling.CubicCalculator(starting_max_rate=0,
                                                 start_time=clock.current_time()),
        rate_clocker=adaptive.RateClocker(clock),
        token_bucket=bucket.TokenBucket(max_rate=1, clock=clock),
        throttling_detector=_ThrottledFlag(),
        clock=clock)
