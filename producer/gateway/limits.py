"""What one identity may do at once: a request rate (moving window, the `limits` library) and how many of its
resources (jobs; later sessions) may be unfinished at the same time. Either answers 429 with Retry-After.

And what a client address may do without a valid credential (FailedAuthLimits): requests with no credential or a
wrong one are counted per address (an IPv6 address by its /64, what one host usually holds); an address over
`--failed-auth-limit` (default 60 a minute, which no person typing or pasting a token meets) is answered 429 with
Retry-After before its credential is checked at all, so a flood costs neither token comparisons nor JWT signature
checks. The table of addresses is an LRU of at most `--failed-auth-clients` entries: a flood from many addresses
evicts the oldest, it never grows without bound. A credential that was valid since the service started (kept as a
keyed hash, never the credential) passes an address's limit and is checked as usual: a user behind the same NAT or
reverse proxy as the flood keeps working (what this costs is said in docs/operations/gateway.md).

Body sizes are limited where bodies are read (producer.gateway.routes.jobs: --max-upload-mb)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

from producer.gateway.identity import Identity

DEFAULT_RATE = "120/minute"  # the jobs page alone polls 30 times a minute
DEFAULT_ACTIVE = 20
BUSY_RETRY_SECONDS = 10  # an identity at its limit of unfinished jobs: ask again in a while
DEFAULT_FAILED_AUTH = "60/minute"  # per client address: requests without a valid credential
DEFAULT_FAILED_AUTH_CLIENTS = 10_000  # addresses remembered (an LRU; a few hundred bytes each)
KNOWN_CREDENTIALS = 10_000  # fingerprints of credentials seen valid (an LRU)
IPV6_PREFIX = 64  # one host's share of an IPv6 network


class LimitExceeded(Exception):
    def __init__(self, detail: str, retry_after: int):
        super().__init__(detail)
        self.detail, self.retry_after = detail, max(1, retry_after)


@dataclass(frozen=True)
class LimitSettings:
    rate: str = DEFAULT_RATE  # "N/second|minute|hour", per identity
    active: int = DEFAULT_ACTIVE  # unfinished resources of each kind per identity
    failed_auth: str = DEFAULT_FAILED_AUTH  # "N/second|minute|hour", per client address
    failed_auth_clients: int = DEFAULT_FAILED_AUTH_CLIENTS  # the most addresses the failed-auth table holds

    def __post_init__(self) -> None:
        parse_rate(self.rate)
        parse_rate(self.failed_auth, "--failed-auth-limit")
        if self.failed_auth_clients < 1:
            raise ValueError(f"--failed-auth-clients {self.failed_auth_clients}: at least 1")


def parse_rate(text: str, option: str = "--rate-limit") -> RateLimitItem:
    try:
        return parse(text)
    except ValueError:
        raise ValueError(f"{option} {text!r}: give it as N/second, N/minute or N/hour") from None


def describe(rate: RateLimitItem) -> str:
    """`60 per 1 minute`"""
    return f"{rate.amount} per {rate.multiples} {rate.GRANULARITY.name}"


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
                f"{identity.name} is over its request rate ({describe(self.rate)})", math.ceil(reset - time.time())
            )

    def start(self, identity: Identity, kind: str, unfinished: int) -> None:
        """Before an identity starts another `kind` (it has `unfinished` ones running or queued)."""
        if unfinished >= self.settings.active:
            raise LimitExceeded(
                f"{identity.name} has {unfinished} unfinished {kind}s, the most one identity may have at once",
                BUSY_RETRY_SECONDS,
            )


def client_key(address: str) -> str:
    """What failures are counted by: an IPv4 address itself, an IPv6 address's /64 (one host can hold a whole
    /64), an IPv4-mapped IPv6 address as IPv4; anything else (a Unix socket, a test client) as given."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64] or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


class AddressLimited(LimitExceeded):
    """A client address over its failed-authentication rate. `audit`: this refusal is the one audit line of its
    window for this address; `refused`: the refusals of this address since its previous audit line."""

    def __init__(self, detail: str, retry_after: int, audit: bool, refused: int):
        super().__init__(detail, retry_after)
        self.audit, self.refused = audit, refused


@dataclass
class _Address:
    audited_at: float = -math.inf  # monotonic time of this address's last audited refusal
    refused: int = 0  # refusals since then


class FailedAuthLimits:
    """Requests without a valid credential, counted per client address (sliding window counter, the `limits`
    library; two counters an address) in a table of at most `clients` addresses, least recently failed evicted."""

    def __init__(self, settings: LimitSettings):
        self.rate = parse_rate(settings.failed_auth, "--failed-auth-limit")
        self.clients = settings.failed_auth_clients
        self._window = SlidingWindowCounterRateLimiter(MemoryStorage())
        self._addresses: OrderedDict[str, _Address] = OrderedDict()
        self._known: OrderedDict[bytes, None] = OrderedDict()
        self._key = secrets.token_bytes(32)  # fingerprints mean nothing outside this process
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._addresses)

    def _fingerprint(self, credential: str) -> bytes:
        return hmac.new(self._key, credential.encode(), hashlib.sha256).digest()

    def admit(self, address: str, credential: str | None) -> None:
        """Before the credential is checked: AddressLimited if this address is over its rate, unless the
        credential is one that was valid before."""
        key = client_key(address)
        if self._window.test(self.rate, key):
            return
        if credential and self._fingerprint(credential) in self._known:
            return  # a credential seen valid: checked as usual, whoever else fails from this address
        reset = self._window.get_window_stats(self.rate, key).reset_time
        now = time.monotonic()
        with self._lock:
            entry = self._entry(key)
            entry.refused += 1
            audit = now - entry.audited_at >= self.rate.get_expiry()
            refused = entry.refused
            if audit:
                entry.audited_at, entry.refused = now, 0
        raise AddressLimited(
            f"too many requests without a valid credential from this address ({describe(self.rate)})",
            math.ceil(reset - time.time()),
            audit,
            refused,
        )

    def failed(self, address: str, credential: str | None) -> None:
        """The credential of a request from this address identified no one: count it."""
        key = client_key(address)
        with self._lock:
            self._entry(key)
            if credential:
                self._known.pop(self._fingerprint(credential), None)
        self._window.hit(self.rate, key)

    def succeeded(self, credential: str) -> None:
        """This credential identified someone: it passes an address's limit from now on."""
        fingerprint = self._fingerprint(credential)
        with self._lock:
            self._known[fingerprint] = None
            self._known.move_to_end(fingerprint)
            while len(self._known) > KNOWN_CREDENTIALS:
                self._known.popitem(last=False)

    def _entry(self, key: str) -> _Address:
        """The address's entry, most recently used now; the least recently used beyond the bound are forgotten
        with their counters (holding the lock)."""
        entry = self._addresses.get(key)
        if entry is None:
            entry = self._addresses[key] = _Address()
        self._addresses.move_to_end(key)
        while len(self._addresses) > self.clients:
            evicted, _ = self._addresses.popitem(last=False)
            self._window.clear(self.rate, evicted)
        return entry
