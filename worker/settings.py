"""Fleet settings shared by the producer and the workers, read from the environment (12-factor style).

Only the standard library here: the producer imports it without OpenVINO, and the worker's parent process
reads it before any model is loaded.

| variable | default | meaning |
| --- | --- | --- |
| LITEMEDSAM_BROKER | redis://127.0.0.1:6379/0 | Celery broker (Redis) |
| LITEMEDSAM_STORE | the broker URL | blob store: `redis://...` or `file:///shared/path` |
| LITEMEDSAM_NAMESPACE | lms | prefix of every key this project and Celery use in Redis or the file store |
| LITEMEDSAM_INPUT_TTL | 86400 | seconds an uploaded study image is kept |
| LITEMEDSAM_RESULT_TTL | 2592000 | seconds a content-addressed result is kept (30 days) |
| LITEMEDSAM_BATCH_TTL | 604800 | seconds a batch's manifest, progress and outcomes are kept (7 days) |
| LITEMEDSAM_VISIBILITY_TIMEOUT | 300 | seconds after which Redis gives a study back to the queue unless the worker holding it renewed its lease (worker.lease) |
| LITEMEDSAM_LEASE_RENEW | visibility / 5 | seconds between a live worker's lease renewals |
| LITEMEDSAM_TIME_CEILING | 21600 | the most any study may run (hard time limit cap, 6 h) |
| LITEMEDSAM_TIME_BASE | 300 | time budget per study: base seconds ... |
| LITEMEDSAM_TIME_PER_SLICE | 15 | ... plus seconds per encoded slice (per view) ... |
| LITEMEDSAM_TIME_PER_BOX_SLICE | 0.5 | ... plus seconds per box and slice (decoder calls) |
| LITEMEDSAM_DEFAULT_QUEUE | litemedsam | queue used when a study is not routed elsewhere |
| LITEMEDSAM_QUEUE_ROUTES | (none) | modality routes, e.g. `PET=pet,MR=big` |
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from worker.keys import check_namespace

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
DEFAULT_QUEUE = "litemedsam"
TASK_NAME = "litemedsam.segment"


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        return float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None


def parse_routes(text: str) -> dict[str, str]:
    """`PET=pet, MR=big` -> {"pet": "pet", "mr": "big"} (modality names are case-insensitive)."""
    routes = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        modality, sep, queue = item.partition("=")
        if not sep or not modality.strip() or not queue.strip():
            raise ValueError(f"queue route {item!r} is not MODALITY=QUEUE")
        routes[modality.strip().lower()] = queue.strip()
    return routes


@dataclass(frozen=True)
class TimeBudget:
    """Soft/hard Celery time limits scaled to a study's size, the hard one capped at `ceiling`."""

    base: float = 300.0
    per_slice: float = 15.0
    per_box_slice: float = 0.5
    ceiling: float = 21600.0  # no study runs longer than this

    def limits(self, slices: int, boxes: int, views: int = 1) -> tuple[int, int]:
        """(soft, hard) seconds for a study of `slices` slices (1 for 2D) and `boxes` boxes."""
        work = slices * views
        soft = self.base + self.per_slice * work + self.per_box_slice * boxes * work
        hard = soft * 1.1 + 60
        if hard > self.ceiling:
            hard = self.ceiling
            soft = min(soft, hard - 60)
        return int(soft), int(hard)


@dataclass(frozen=True)
class FleetSettings:
    broker_url: str = DEFAULT_BROKER
    store_url: str = ""  # empty: the broker's Redis
    namespace: str = "lms"
    input_ttl: int = 86400
    result_ttl: int = 30 * 86400
    batch_ttl: int = 7 * 86400
    visibility_timeout: int = 300
    lease_renew: float = 0.0  # 0: visibility_timeout / 5
    budget: TimeBudget = field(default_factory=TimeBudget)
    default_queue: str = DEFAULT_QUEUE
    queue_routes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_namespace(self.namespace)  # a bad LITEMEDSAM_NAMESPACE stops a worker or producer at start

    @property
    def lease_renew_interval(self) -> float:
        return self.lease_renew or max(1.0, self.visibility_timeout / 5)

    @property
    def store(self) -> str:
        return self.store_url or self.broker_url

    def queue_for(self, modality: str, explicit: str | None = None) -> str:
        """An explicit queue wins; else the modality's route; else the default queue."""
        return explicit or self.queue_routes.get(modality.lower(), self.default_queue)

    def with_broker(self, broker_url: str | None) -> "FleetSettings":
        return replace(self, broker_url=broker_url) if broker_url else self

    @classmethod
    def from_env(cls, broker_url: str | None = None) -> "FleetSettings":
        return cls(
            broker_url=broker_url or _env("LITEMEDSAM_BROKER", DEFAULT_BROKER),
            store_url=os.environ.get("LITEMEDSAM_STORE", ""),
            namespace=_env("LITEMEDSAM_NAMESPACE", "lms"),
            input_ttl=int(_env_float("LITEMEDSAM_INPUT_TTL", 86400)),
            result_ttl=int(_env_float("LITEMEDSAM_RESULT_TTL", 30 * 86400)),
            batch_ttl=int(_env_float("LITEMEDSAM_BATCH_TTL", 7 * 86400)),
            visibility_timeout=int(_env_float("LITEMEDSAM_VISIBILITY_TIMEOUT", 300)),
            lease_renew=_env_float("LITEMEDSAM_LEASE_RENEW", 0.0),
            budget=TimeBudget(
                base=_env_float("LITEMEDSAM_TIME_BASE", 300.0),
                per_slice=_env_float("LITEMEDSAM_TIME_PER_SLICE", 15.0),
                per_box_slice=_env_float("LITEMEDSAM_TIME_PER_BOX_SLICE", 0.5),
                ceiling=_env_float("LITEMEDSAM_TIME_CEILING", 21600.0),
            ),
            default_queue=_env("LITEMEDSAM_DEFAULT_QUEUE", DEFAULT_QUEUE),
            queue_routes=parse_routes(os.environ.get("LITEMEDSAM_QUEUE_ROUTES", "")),
        )


@dataclass(frozen=True)
class EngineConfig:
    """What a worker process needs to build its Engine (converted to EngineSettings in the child)."""

    models_dir: Path
    precision: str = "f32"
    threads: int = 0
    cache_mb: int = 2048
    routing_file: Path | None = None
    cpus: str = ""  # cores the worker owns ("" none, "all", or a cpu list): worker.cpu_affinity.plan

    @classmethod
    def from_env(cls) -> "EngineConfig":
        from models.paths import default_models_dir

        routing = os.environ.get("LITEMEDSAM_ROUTING")
        return cls(
            models_dir=default_models_dir(),
            precision=_env("LITEMEDSAM_PRECISION", "f32"),
            threads=int(_env_float("LITEMEDSAM_THREADS", 0)),
            cache_mb=int(_env_float("LITEMEDSAM_CACHE_MB", 2048)),
            routing_file=Path(routing) if routing else None,
            cpus=os.environ.get("LITEMEDSAM_CPUS", ""),
        )

    def engine_settings(self, cores: tuple[int, ...] = ()):
        """The engine's own settings object (imports OpenVINO: call it in a worker child only); `cores`: this
        process's core binding (worker.cpu_affinity.plan)."""
        from worker.engine.engine import EngineSettings

        return EngineSettings(models_dir=self.models_dir, precision=self.precision, threads=self.threads,
                              cache_bytes=self.cache_mb << 20, routing_file=self.routing_file, cores=cores)


RECONNECT_SECONDS = 120.0  # how long a Redis command keeps retrying through a broker restart


def redis_client(url: str, reconnect_seconds: float = RECONNECT_SECONDS):
    """A Redis client for the fleet's own keys (the broker connection is Celery's).

    Every command retries on connection loss and timeouts with exponential backoff (0.1 s doubling to 5 s) for
    about `reconnect_seconds`, so a restarted broker costs a pause, not a study.
    """
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    attempts = _attempts_within(reconnect_seconds, base=0.1, cap=5.0)
    retry = Retry(ExponentialBackoff(cap=5.0, base=0.1), attempts)
    return redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=60, health_check_interval=30,
                                retry=retry, retry_on_error=[redis.exceptions.ConnectionError,
                                                             redis.exceptions.TimeoutError])


def _attempts_within(seconds: float, base: float, cap: float) -> int:
    """Retries of a doubling backoff (base, 2 base, ... capped) whose sleeps add up to `seconds`."""
    attempts, slept, delay = 0, 0.0, base
    while slept < seconds:
        slept += delay
        delay = min(cap, delay * 2)
        attempts += 1
    return attempts


def _cgroup_cpu_limit() -> int | None:
    """CPUs allowed by a container's CPU quota (cgroup v2 cpu.max or v1 cfs files), None if unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text().strip()
            period = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1"):
        return None
    return max(1, -(-int(quota) // int(period)))  # ceil


def available_cores() -> int:
    """Cores this process may use: CPU affinity, bounded by a container's CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return min(cores, limit) if limit else cores


def default_threads(concurrency: int) -> int:
    """OpenVINO threads per worker process so that threads x concurrency <= cores."""
    return max(1, available_cores() // max(1, concurrency))
