"""Per-owner request rate: a token bucket per owner, in this process.

Each gateway replica keeps its own buckets, so with N replicas behind round-robin an owner
may reach up to N times the configured rate. The other per-owner limits (active jobs, stored
bytes) are counted in Postgres and hold across replicas (``gateway.store``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from runtime.cache import Lru
from runtime.errors import ResourceExhausted

#: Buckets kept at most; the least recently used are dropped beyond it (a dropped bucket
#: starts full again, which only matters for an owner idle while 100k others were active).
MAX_BUCKETS = 100_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Allows ``rate`` requests per second per owner, with bursts of up to ``burst``."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = MAX_BUCKETS,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.buckets: Lru[str, _Bucket] = Lru(max_buckets)

    def acquire(self, owner: str) -> None:
        """Takes one token from the owner's bucket, or raises RESOURCE_EXHAUSTED saying when
        the next one will be there."""
        now = self.clock()
        bucket = self.buckets.get(owner)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            self.buckets.put(owner, bucket)
        else:
            elapsed = max(now - bucket.updated, 0.0)
            bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return
        wait = (1.0 - bucket.tokens) / self.rate
        raise ResourceExhausted(
            f"too many requests: at most {self.rate:g} per second (bursts of {self.burst:g}); "
            f"retry in {math.ceil(wait * 1000) / 1000:g} s",
            reason="RATE_LIMITED",
            metadata={"limit_per_second": f"{self.rate:g}", "burst": f"{self.burst:g}"},
            retry_after=wait,
        )
