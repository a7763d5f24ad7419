"""The state of one worker child process: its compiled engine, store and ledger, built once after the fork.

`start(node)` runs in Celery's worker_process_init (each prefork child, never the parent), so no OpenVINO
object is ever shared across a fork. Tasks reach the state through `context()`.
"""

from __future__ import annotations

import logging
import time

from worker.calibration import choose_profile
from worker.contract.keys import Keys
from worker.contract.settings import EngineConfig, FleetSettings, redis_client, variable, worker_queues
from worker.cpu_affinity import CoreBinding, plan
from worker.directory import IdentityDirectory
from worker.job_context import WorkerContext
from worker.ledger import BatchLedger
from worker.memory import MemoryGuard
from worker.store import open_store

log = logging.getLogger(__name__)
QUEUES_ENV = variable("worker_queues")  # set by the parent (lifecycle) for its children
_context: WorkerContext | None = None
_failure: str = ""


def core_binding(config: EngineConfig) -> CoreBinding:
    """This pool process's cores: its pool index (0 .. concurrency - 1, reused by a replacement child) picks
    its block of the worker's cores (worker.cpu_affinity)."""
    from celery.utils.log import current_process_index

    return plan(config.cpus, current_process_index(base=0) or 0, config.threads)


def build_context(node: str, settings: FleetSettings, config: EngineConfig, telemetry) -> WorkerContext:
    from worker.engine.engine import Engine, EngineSettings  # OpenVINO is imported here, in the child, and only here

    started = time.perf_counter()
    binding = core_binding(config)
    engine = Engine(EngineSettings.from_config(config, binding.cores), choose_profile)
    engine.warm_up()
    log.info(
        "%s: %d model(s) compiled in %.1f s (precision %s: %s%s, %d thread(s), %s)",
        node,
        len(engine.registry),
        time.perf_counter() - started,
        engine.precision.name,
        engine.precision.profile.describe(),
        f"; {engine.precision.reason}" if engine.precision.reason else "",
        config.threads,
        binding.describe(),
    )
    client = redis_client(settings.broker_url)
    keys = Keys(settings.namespace)
    store = open_store(settings.store, settings.namespace, client if settings.store == settings.broker_url else None)
    return WorkerContext(
        engine=engine,
        identity=engine.identity(),
        store=store,
        ledger=BatchLedger(client, keys, settings.batch_ttl),
        result_ttl=settings.result_ttl,
        node=node,
        telemetry=telemetry,
        keys=keys,
        memory=MemoryGuard.from_env(),
        split=settings.split,
    )


def start(node: str, telemetry) -> None:
    """Build this child's context and announce its engine on the queues the worker consumes."""
    global _context, _failure
    try:
        _context = build_context(node, FleetSettings.from_env(), EngineConfig.from_env(), telemetry)
    except Exception as error:
        _failure = f"{type(error).__name__}: {error}"
        raise
    announce(_context, worker_queues())


def announce(ctx: WorkerContext, queues: list[str]) -> None:
    """Publish this engine's identity on its queues (without it producers only miss stored results)."""
    queues = queues or [FleetSettings.from_env().default_queue]
    try:
        IdentityDirectory(ctx.ledger.client, ctx.keys).publish(queues, ctx.identity, ctx.node)
    except Exception as error:
        log.warning("%s: engine identity not published (%s); producers will not find stored results", ctx.node, error)
        return
    log.info("%s serves %s with engine %s", ctx.node, ", ".join(queues), ctx.identity.fingerprint())


def context() -> WorkerContext | None:
    return _context


def failure() -> str:
    return _failure
