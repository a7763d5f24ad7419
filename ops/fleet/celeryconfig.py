"""Celery settings for a Flower that runs without the project installed (compose.yaml's mher/flower service).

Celery's default loader imports `celeryconfig` from the Python path. The fleet keeps its queues and event
channels under its namespace's key prefix, so Flower must use the same prefix to see its workers, tasks and
queue lengths. compose.yaml mounts this file and worker/contract/keys.py (the one place the prefix is decided) side by
side on PYTHONPATH.
"""

import os

from keys import Keys

broker_transport_options = {"global_keyprefix": Keys(os.environ.get("LITEMEDSAM_NAMESPACE") or "lms").broker_prefix}
