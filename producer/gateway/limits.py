"""What one identity may do at once: a request rate (moving window, the `limits` library) and how many of its
resources (jobs; later sessions) may be unfinished at the same time. Either answers 429 with Retry-After.

Body sizes are limited where bodies are read (producer.gateway.routes.jobs: --max-upload-mb)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from producer.gateway.identity import Identity

DEFAULT_RATE = "120/minute"  # the jobs page alone polls 30 times a minute
DEFAULT_ACTIVE = 20
BUSY_RETRY_SECONDS = 10  # an identity at its limit of unfinished jobs: ask again in a while


class LimitExceeded(Exception):
    def __init__(self, detail: str, retry_after: int):
        super().__init__(detail)
        self.detail, self.retry_after = detail, max(1, retry_after)


@dataclass(frozen=True)
class LimitSettings:
    rate: str = DEFAULT_RATE  # "N/second|minute|hour", per identity
    active: int = DEFAULT_ACTIVE  # unfinished resources of each kind per identity


def parse_rate(text: str) -> RateLimitItem:
    try:
        return parse(text)
    except ValueError:
        raise ValueError(f"--rate-limit {text!r}: give it as N/second, N/minute or N/hour") from None


class IdentityLimits:
    def __init__(self, settings: LimitSettings):
        self.settings = settings
        self.rate = parse_rate(settings.rate)
        self._window = MovingWindowRateLimiter(MemoryStorage())

    def request(self, identity: Identity) -> None:
        """Count one request of this identity; LimitExceeded when it is over its rate."""
        if not self._window.hit(self.rate, identity.name):
            reset = self._window.get_window_stats(self.rate, identity.name).reset_time
            raise LimitExceeded(
                f"{identity.name} is over its request rate ({self.rate.amount} per "
                f"{self.rate.multiples} {self.rate.GRANULARITY.name})",
                math.ceil(reset - time.time()),
            )

    def start(self, identity: Identity, kind: str, unfinished: int) -> None:
        """Before an identity starts another `kind` (it has `unfinished` ones running or queued)."""
        if unfinished >= self.settings.active:
            raise LimitExceeded(
                f"{identity.name} has {unfinished} unfinished {kind}s, the most one identity may have at once",
                BUSY_RETRY_SECONDS,
            )
