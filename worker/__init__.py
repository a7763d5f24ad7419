"""CPU segmentation worker: the OpenVINO engine and (in worker.app / worker.tasks) its Celery wrapper.

Importing this package does not import OpenVINO; only worker.engine.runtime does.
"""

__version__ = "0.1.0"
