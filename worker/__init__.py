"""CPU segmentation worker: the OpenVINO engine and (in worker.app / worker.tasks) its Celery wrapper.

Importing this package does not import OpenVINO; only worker.engine.runtime does.
"""

from worker.contract.version import PACKAGE_VERSION as __version__

__all__ = ["__version__"]
