"""Where exported models live: outside git, configurable, with a per-user default."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "LITEMEDSAM_MODELS_DIR"
COMPILE_CACHE_ENV_VAR = "LITEMEDSAM_COMPILE_CACHE_DIR"


def default_models_dir() -> Path:
    """$LITEMEDSAM_MODELS_DIR, else $XDG_CACHE_HOME/litemedsam-fleet/models, else ~/.cache/litemedsam-fleet/models."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "litemedsam-fleet" / "models"


def compile_cache_dir(models_dir: Path) -> Path:
    """OpenVINO's CACHE_DIR for compiled blobs: $LITEMEDSAM_COMPILE_CACHE_DIR (for a read-only models dir, as the
    containers mount it), else beside the IR."""
    if os.environ.get(COMPILE_CACHE_ENV_VAR):
        return Path(os.environ[COMPILE_CACHE_ENV_VAR]).expanduser()
    return Path(models_dir) / ".ov-cache"
