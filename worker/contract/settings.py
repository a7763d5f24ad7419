"""Every LITEMEDSAM_* setting in one typed table (`Environment`, pydantic-settings), and what is built from it.

The producer, the gateway and the workers read the environment through `Environment` only (12-factor style):
FleetSettings (broker, store, namespace, lifetimes, leases, time budget, queues, sessions) and EngineConfig (what a
worker process or an in-process run builds its engine from). The docs' settings page (docs/operations/settings.md) is
generated from `Environment` (`python -m worker.contract.settings`), and a test checks that they agree.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.contract.budget import TimeBudget
from worker.contract.engine_defaults import ENGINE_DEFAULTS
from worker.contract.errors import validation_message
from worker.contract.keys import check_namespace
from worker.contract.routing import DEFAULT_ROUTING

if TYPE_CHECKING:  # redis is imported when a client is made, not with the contract
    import redis

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
DEFAULT_QUEUE = "litemedsam"
TASK_NAME = "litemedsam.segment"
PART_TASK_NAME = "litemedsam.part"  # a part of a split study (worker.parts)
SESSION_TASK_NAME = "litemedsam.session_step"  # one interaction of a session (worker.sessions)
PREFIX = "LITEMEDSAM_"
ENGINE_PRECISIONS = (
    "f32 (reproducible), bf16, bf16-encoder, ... (routing table profiles), int8* (models.quantize), fast"
)


class Environment(BaseSettings):
    """The LITEMEDSAM_* variables. `default` on the settings page is the field's `shown` note where the default is
    computed."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, env_ignore_empty=True, extra="ignore", frozen=True)

    broker: str = Field(DEFAULT_BROKER, description="Celery broker (Redis)")
    store: str = Field(
        "",
        description="blob store: `redis://...` or `file:///shared/path`",
        json_schema_extra={"shown": "the broker URL"},
    )
    namespace: str = Field(
        "lms",
        description="prefix of every key this project and Celery use in Redis or the "
        "file store; 1-64 letters, digits, `_`, `.` or `-`",
    )
    input_ttl: float = Field(86400, description="seconds an uploaded study image is kept")
    result_ttl: float = Field(30 * 86400, description="seconds a content-addressed result is kept (30 days)")
    batch_ttl: float = Field(
        7 * 86400, description="seconds a batch's manifest, progress and outcomes are kept (7 days)"
    )
    visibility_timeout: float = Field(
        300,
        description="seconds after which Redis gives a study back to the queue "
        "unless the worker holding it renewed its lease",
    )
    lease_renew: float = Field(
        0.0, description="seconds between a live worker's lease renewals", json_schema_extra={"shown": "visibility / 5"}
    )
    time_base: float = Field(300.0, description="time budget per study: base seconds ...")
    time_per_slice: float = Field(15.0, description="... plus seconds per encoded slice (per view) ...")
    time_per_box_slice: float = Field(0.5, description="... plus seconds per box and slice (decoder calls)")
    time_ceiling: float = Field(21600.0, description="the most any study may run (hard time limit cap, 6 h)")
    default_queue: str = Field(DEFAULT_QUEUE, description="queue used when a study is not routed elsewhere")
    queue_routes: str = Field(
        "", description="modality routes, e.g. `PET=pet,MR=big`", json_schema_extra={"shown": "(none)"}
    )
    split: str = Field(
        "on",
        description="`off`: no worker splits a study across the fleet (worker.fanout); "
        "`producer submit --split off` per batch",
    )
    split_min_slices: int = Field(
        40, description="a 3D study splits only if it needs at least this many slice encodings (all views)"
    )
    split_max_parts: int = Field(8, description="at most this many slice-range parts per study")
    split_part_slices: int = Field(12, description="at least this many needed slices per part")
    split_claim_ttl: float = Field(
        20.0,
        description="seconds a claim on a slice (or a PET view, renewed while it "
        "runs) lasts: the lease of a part's work",
    )
    split_blob_ttl: int = Field(
        1800, description="seconds an embedding or PET view blob is kept in the store (deleted when its study ends)"
    )
    split_prefetch: int = Field(4, description="embeddings the coordinator fetches ahead of use")
    session_dead_after: float = Field(
        3.0,
        ge=1.5,
        le=300.0,
        description="fleet sessions (gateway): seconds without a worker's presence stamp (it stamps every second) "
        "before the worker counts as dead and its sessions go on elsewhere; 1.5 to 300",
    )
    session_pickup: float = Field(
        10.0,
        ge=0.5,
        le=3600.0,
        description="fleet sessions (gateway): seconds a live worker may leave a step waiting (busy with a study) "
        "before the step is sent to another worker; 0.5 to 3600",
    )
    session_step_limit: float = Field(
        900.0,
        ge=10.0,
        le=86400.0,
        description="fleet sessions (gateway): the longest a step may run before it answers 503 (a box on a long "
        "CT encodes it); 10 to 86400",
    )
    session_cache_sessions: int = Field(
        8,
        ge=1,
        le=1000,
        description="fleet sessions (worker): sessions a worker process keeps (image, segmenter, label masks), "
        "least recently used dropped first; 1 to 1000",
    )
    session_cache_mb: int = Field(
        1024,
        ge=16,
        le=1 << 20,
        description="fleet sessions (worker): MB of images and masks the kept sessions may hold per process (their "
        "slices' embeddings count in `LITEMEDSAM_CACHE_MB`); 16 to 1048576",
    )
    models_dir: str = Field(
        "",
        description="exported models (read by models.paths)",
        json_schema_extra={"shown": "~/.cache/litemedsam-fleet/models"},
    )
    compile_cache_dir: str = Field(
        "",
        description="OpenVINO's compiled-model cache (read by models.paths; the containers set it, since their "
        "models dir is read-only)",
        json_schema_extra={"shown": "<models dir>/.ov-cache"},
    )
    precision: str = Field(ENGINE_DEFAULTS.precision, description="engine precision profile: " + ENGINE_PRECISIONS)
    threads: int = Field(
        ENGINE_DEFAULTS.threads,
        description="OpenVINO threads per engine process",
        json_schema_extra={"shown": "cores / processes"},
    )
    cpus: str = Field(
        "",
        description="cores a worker owns (`all` or a list like `0-3,6`); none: not pinned",
        json_schema_extra={"shown": "(none)"},
    )
    cache_mb: int = Field(ENGINE_DEFAULTS.cache_mb, description="embedding cache bound per engine process (MB)")
    routing: str = Field("", description="routing table file", json_schema_extra={"shown": "worker/routing.toml"})
    max_voxels: int = Field(
        ENGINE_DEFAULTS.max_voxels,
        description="largest image accepted (voxels; checked from the file "
        "header where the format allows, and by the engine)",
        json_schema_extra={"shown": "512 Mi"},
    )
    task_memory_mb: float | None = Field(
        None,
        description="memory guard per worker process (MB; 0: off)",
        json_schema_extra={"shown": "80 % of RAM / concurrency"},
    )
    metrics_port: int | None = Field(
        None, description="serve a worker's Prometheus metrics on this port", json_schema_extra={"shown": "(off)"}
    )
    api_tokens: str = Field(
        "",
        description="the gateway's named API tokens, `NAME:TOKEN[:SCOPE+SCOPE]`, comma-separated",
        repr=False,
        json_schema_extra={"shown": "(none)"},
    )
    worker_queues: str = Field(
        "",
        description="internal: the queues a worker's parent hands its children",
        json_schema_extra={"shown": "(set by the worker)"},
    )
    export_venv: str = Field(
        "",
        description="ops/setup.sh: the venv with torch used for the one-off export",
        json_schema_extra={"shown": "~/.cache/litemedsam-fleet/export-venv"},
    )


def environment() -> Environment:
    """The settings as the environment gives them now (a bad value: a ValueError naming the variable)."""
    from pydantic import ValidationError

    try:
        return Environment()
    except ValidationError as error:
        raise ValueError(validation_message(error, name=lambda loc: f"{PREFIX}{str(loc[0]).upper()}")) from None


def variable(name: str) -> str:
    """The environment variable of a setting of the table (`routing` -> `LITEMEDSAM_ROUTING`): the one way code
    names a variable, to write it for child processes or to mention it in a message; a KeyError for a name that is
    not in the table."""
    if name not in Environment.model_fields:
        raise KeyError(f"{name!r} is not a setting of worker.contract.settings.Environment")
    return f"{PREFIX}{name.upper()}"


def routing_file(path: Path | str | None = None) -> Path:
    """The routing table file: `path` if given, else $LITEMEDSAM_ROUTING, else the shipped worker/routing.toml."""
    return Path(path or environment().routing or DEFAULT_ROUTING)


def max_voxels() -> int:
    """The largest image accepted ($LITEMEDSAM_MAX_VOXELS)."""
    return environment().max_voxels


def worker_queues() -> list[str]:
    """The queues a worker's parent handed its children ($LITEMEDSAM_WORKER_QUEUES, comma-separated)."""
    return [queue for queue in environment().worker_queues.split(",") if queue]


def settings_table() -> str:
    """The settings page's table (docs/operations/settings.md), from Environment."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, info in Environment.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        shown = extra.get("shown")
        if shown is None:
            default = info.default
            shown = f"{default:g}" if isinstance(default, float) else str(default)
        rows.append(f"| `{variable(name)}` | {shown} | {info.description} |")
    return "\n".join(rows)


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
class SplitSettings:
    """When and how one study is fanned out across the fleet (worker.fanout decides with these)."""

    enabled: bool = True
    min_slices: int = 40  # 3DBox_CT_tsup needs 90, the demo CT phantom 15
    max_parts: int = 8
    part_slices: int = 12
    claim_ttl: float = 20.0
    blob_ttl: int = 1800
    prefetch: int = 4

    @classmethod
    def from_env(cls) -> SplitSettings:
        env = environment()
        switch = env.split.strip().lower()
        if switch not in ("on", "off"):
            raise ValueError(f"{PREFIX}SPLIT={env.split!r}: use on or off")
        return cls(
            enabled=switch == "on",
            min_slices=max(1, env.split_min_slices),
            max_parts=max(1, env.split_max_parts),
            part_slices=max(1, env.split_part_slices),
            claim_ttl=max(0.5, env.split_claim_ttl),
            blob_ttl=max(60, env.split_blob_ttl),
            prefetch=max(0, env.split_prefetch),
        )


def _default(name: str) -> Any:
    """The table's default of a setting (so a settings dataclass's defaults are the table's, stated once)."""
    return Environment.model_fields[name].default


@dataclass(frozen=True)
class SessionSettings:
    """Interactive sessions on the fleet: the gateway's failover timings (producer.fleet_sessions) and a worker
    process's session cache bounds (worker.sessions)."""

    dead_after: float = _default("session_dead_after")
    pickup: float = _default("session_pickup")
    step_limit: float = _default("session_step_limit")
    cache_sessions: int = _default("session_cache_sessions")
    cache_bytes: int = _default("session_cache_mb") << 20

    @classmethod
    def from_env(cls) -> SessionSettings:
        env = environment()
        return cls(
            dead_after=env.session_dead_after,
            pickup=env.session_pickup,
            step_limit=env.session_step_limit,
            cache_sessions=env.session_cache_sessions,
            cache_bytes=env.session_cache_mb << 20,
        )


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
    split: SplitSettings = field(default_factory=SplitSettings)
    sessions: SessionSettings = field(default_factory=SessionSettings)

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

    def with_broker(self, broker_url: str | None) -> FleetSettings:
        return replace(self, broker_url=broker_url) if broker_url else self

    @classmethod
    def from_env(cls, broker_url: str | None = None) -> FleetSettings:
        env = environment()
        return cls(
            broker_url=broker_url or env.broker,
            store_url=env.store,
            namespace=env.namespace,
            input_ttl=int(env.input_ttl),
            result_ttl=int(env.result_ttl),
            batch_ttl=int(env.batch_ttl),
            visibility_timeout=int(env.visibility_timeout),
            lease_renew=env.lease_renew,
            budget=TimeBudget(
                base=env.time_base,
                per_slice=env.time_per_slice,
                per_box_slice=env.time_per_box_slice,
                ceiling=env.time_ceiling,
            ),
            default_queue=env.default_queue,
            queue_routes=parse_routes(env.queue_routes),
            split=SplitSettings.from_env(),
            sessions=SessionSettings.from_env(),
        )


@dataclass(frozen=True)
class EngineConfig:
    """The engine's options, as both CLIs offer them (worker.contract.engine_options: one command-line option per
    field) and a worker process builds its engine from (worker.engine.engine.EngineSettings.from_config, in the
    process that runs the engine)."""

    models_dir: Path | None = None  # None: models.paths.default_models_dir()
    precision: str = ENGINE_DEFAULTS.precision
    threads: int = ENGINE_DEFAULTS.threads
    cache_mb: int = ENGINE_DEFAULTS.cache_mb
    routing_file: Path | None = None
    cpus: str = ""  # cores the worker owns ("" none, "all", or a cpu list): worker.cpu_affinity.plan
    max_voxels: int = ENGINE_DEFAULTS.max_voxels

    @classmethod
    def from_env(cls) -> EngineConfig:
        env = environment()
        return cls(
            models_dir=Path(env.models_dir).expanduser() if env.models_dir else None,
            precision=env.precision,
            threads=env.threads,
            cache_mb=env.cache_mb,
            routing_file=Path(env.routing) if env.routing else None,
            cpus=env.cpus,
            max_voxels=env.max_voxels,
        )

    def with_options(self, **options: Any) -> EngineConfig:
        """This config with the options a command line gave (None: not given, the environment's value stays)."""
        return replace(self, **{name: value for name, value in options.items() if value is not None})


RECONNECT_SECONDS = 120.0  # how long a Redis command keeps retrying through a broker restart


def redis_client(url: str, reconnect_seconds: float = RECONNECT_SECONDS) -> redis.Redis:
    """A Redis client for the fleet's own keys (the broker connection is Celery's).

    Every command retries on connection loss and timeouts with exponential backoff (0.1 s doubling to 5 s) for
    about `reconnect_seconds`, so a restarted broker costs a pause, not a study.
    """
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    attempts = _attempts_within(reconnect_seconds, base=0.1, cap=5.0)
    retry = Retry(ExponentialBackoff(cap=5.0, base=0.1), attempts)
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=5,
        socket_timeout=60,
        health_check_interval=30,
        retry=retry,
        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
    )


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


def thread_plan(concurrency: int, threads: int = 0) -> tuple[int, str | None]:
    """(threads per process, a warning if threads x concurrency oversubscribes the cores, else None);
    `threads` 0 takes the default."""
    threads = threads or default_threads(concurrency)
    cores = available_cores()
    if threads * concurrency > cores:
        return threads, (
            f"{threads} threads x {concurrency} processes > {cores} cores: OpenVINO will oversubscribe the CPU"
        )
    return threads, None


if __name__ == "__main__":  # the settings page's table
    sys.stdout.write(settings_table() + "\n")
