"""OpenVINO: compile a model's encoder and decoder once per process, with an explicit precision and thread count.

This CPU defaults to bf16 inference when nothing is said, so the precision is always set explicitly.
Outputs are copied out of the infer request: its output buffer is reused by the next call.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import openvino as ov

from models.registry import ModelSpec

PRECISIONS = {"f32": "f32", "bf16": "bf16"}


@dataclass(frozen=True)
class RuntimeSettings:
    precision: str = "f32"
    threads: int = 0  # 0: let OpenVINO use all cores of this process
    cache_dir: Path | None = None

    def compile_config(self) -> dict:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision profile {self.precision!r}; choose from {sorted(PRECISIONS)}")
        config = {"INFERENCE_PRECISION_HINT": PRECISIONS[self.precision], "PERFORMANCE_HINT": "LATENCY"}
        if self.threads > 0:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        return config


@lru_cache(maxsize=None)
def _core(cache_dir: str | None) -> ov.Core:
    core = ov.Core()
    if cache_dir:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        core.set_property({"CACHE_DIR": cache_dir})
    return core


class CompiledSam:
    """A SAM-family model ready to run: encode(image) -> embedding, decode(embedding, boxes) -> logits."""

    def __init__(self, spec: ModelSpec, settings: RuntimeSettings):
        started = time.perf_counter()
        core = _core(str(settings.cache_dir) if settings.cache_dir else None)
        config = settings.compile_config()
        self.spec = spec
        self.settings = settings
        self._encoder = core.compile_model(str(spec.encoder_xml), "CPU", config).create_infer_request()
        self._decoder = core.compile_model(str(spec.decoder_xml), "CPU", config).create_infer_request()
        self.load_seconds = time.perf_counter() - started

    def encode(self, image: np.ndarray) -> np.ndarray:
        """(1, 3, S, S) float32 -> (1, C, h, w) float32 embedding (an owned copy)."""
        self._encoder.infer([image])
        return np.array(self._encoder.get_output_tensor(0).data, copy=True)

    def decode(self, embedding: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Embedding + (B, 4) model-input boxes -> (B, 1, L, L) float32 low-res logits (an owned copy)."""
        self._decoder.infer([embedding, np.ascontiguousarray(boxes, dtype=np.float32)])
        return np.array(self._decoder.get_output_tensor(0).data, copy=True)
