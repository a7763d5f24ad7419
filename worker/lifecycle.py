"""Celery signal handlers: what happens when a worker (parent) and each of its children start and stop.

Parent (`celeryd_init`, before the pool forks): default OpenVINO threads = cores // concurrency, the queues
for the children to announce, the Prometheus multiprocess directory. Parent (`worker_ready`): serve Prometheus.
Child (`worker_process_init`): build and compile the engine, once, and publish its identity per queue.
"""

from __future__ import annotations

import logging
import os
import signal

from celery import signals

from worker import memory, process, telemetry
from worker.contract.settings import available_cores, environment, thread_plan, variable

log = logging.getLogger(__name__)
THREADS_ENV = variable("threads")


def threads_for(concurrency: int) -> int:
    """The OpenVINO thread count children will use; sets the default in the environment if none is given."""
    threads, warning = thread_plan(concurrency, environment().threads)
    os.environ[THREADS_ENV] = str(threads)
    if warning:
        log.warning("%s", warning)
    return threads


@signals.celeryd_init.connect
def on_worker_init(sender=None, instance=None, conf=None, options=None, **_) -> None:
    options = options or {}
    concurrency = int(options.get("concurrency") or (conf and conf.worker_concurrency) or available_cores())
    threads = threads_for(concurrency)
    memory_limit = os.environ.setdefault(memory.LIMIT_ENV, str(memory.default_limit_mb(concurrency)))
    queues = options.get("queues") or []
    os.environ[process.QUEUES_ENV] = ",".join(queues.split(",") if isinstance(queues, str) else queues)
    log.info(
        "%s: %d process(es) x %d OpenVINO thread(s), memory guard %s MB per process",
        sender,
        concurrency,
        threads,
        memory_limit,
    )
    if telemetry.metrics_port() is not None:
        telemetry.prepare_parent()


@signals.worker_ready.connect
def on_worker_ready(sender=None, **_) -> None:
    port = telemetry.metrics_port()
    if port is not None:
        telemetry.serve(port)


@signals.worker_shutdown.connect
def on_worker_shutdown(**_) -> None:
    if telemetry.metrics_port() is not None:
        telemetry.cleanup_parent()


@signals.worker_process_init.connect
def on_process_init(sender=None, **_) -> None:
    node = str(sender or "worker")
    try:
        process.start(node, telemetry.ChildTelemetry())
    except Exception:
        # A worker that cannot run its models must not take studies: stop it (warm shutdown) and say why.
        log.critical("%s: cannot build the engine; stopping this worker", node, exc_info=True)
        os.kill(os.getppid(), signal.SIGTERM)
