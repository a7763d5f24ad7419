"""The package's version, from its installed metadata (pyproject.toml's `version`, the one place it is written).

Every layer that records it (the engine's provenance, the engine identity in content keys, the DICOM writers'
SoftwareVersions, the gateway's API) reads it here, so none of them imports a package above its own.
"""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "litemedsam-fleet"


def _installed_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise ImportError(
            f"the {DISTRIBUTION} package is not installed in this environment (pip install -e .): "
            "its version is read from the installed metadata"
        ) from None


PACKAGE_VERSION = _installed_version()
