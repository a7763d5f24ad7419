"""The engine's defaults, one table: the environment (worker.contract.settings.Environment), the shared engine
config (EngineConfig), the engine's settings (worker.engine.engine.EngineSettings), its runtime and its slice
settings all start from these values, so a default changes here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.contract.precision import DEFAULT_PROFILE
from worker.contract.validation import DEFAULT_MAX_VOXELS


@dataclass(frozen=True)
class EngineDefaults:
    precision: str = DEFAULT_PROFILE  # f32: reproducible masks across a fleet (REFERENCE.md)
    threads: int = 0  # 0: every core this process may use (a fleet worker: cores // its processes)
    cache_mb: int = 2048  # embedding cache bound per engine process
    decode_chunk: int = 16  # boxes decoded per decoder call (bounded memory; no speed-up from larger batches)
    max_voxels: int = DEFAULT_MAX_VOXELS  # largest image accepted

    @property
    def cache_bytes(self) -> int:
        return self.cache_mb << 20


ENGINE_DEFAULTS = EngineDefaults()
