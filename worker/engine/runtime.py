"""OpenVINO: compile a model's encoder and decoder once per process, with an explicit precision and thread count.

This CPU defaults to bf16 inference when nothing is said, so the precision is always set explicitly.
Outputs are copied out of the infer request: its output buffer is reused by the next call.

Each model part compiles at its own precision (worker.contract.precision.PartPrecision, chosen per strategy by a
profile):
"f32" (default, reproducible), "bf16" (OpenVINO's hint; a CPU without AVX512-BF16 or AMX runs it as f32, which
runtime_precisions shows), and, for the encoder, "int8*" (an NNCF-quantized encoder written by
`python -m models.quantize --profile NAME` and listed in the model's manifest, checked against its sha256; its
float parts run in f32).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np
import openvino as ov

from models.quantize import PROFILE_PREFIX, profile_encoder
from models.registry import ModelSpec, combined_sha256
from worker.contract.engine_defaults import ENGINE_DEFAULTS
from worker.contract.precision import F32, FLOAT_PRECISIONS, PartPrecision
from worker.engine.cores import CoreBinding

PRECISIONS = {precision: precision for precision in FLOAT_PRECISIONS}  # profile part -> OpenVINO's hint


def is_quantized(precision: str) -> bool:
    return precision.startswith(PROFILE_PREFIX)


@dataclass(frozen=True)
class RuntimeSettings:
    precision: str = ENGINE_DEFAULTS.precision
    threads: int = ENGINE_DEFAULTS.threads  # 0: let OpenVINO use all cores of this process
    cache_dir: Path | None = None
    cores: tuple[int, ...] = ()  # this process's explicit core set (worker.cpu_affinity); empty: not pinned

    @property
    def precision_cache_dir(self) -> Path | None:
        """One compiled-cache dir per precision profile. OpenVINO 2026.4's cache key ignores
        INFERENCE_PRECISION_HINT: in a shared dir a bf16 compile imports the f32 blob of the same IR and then
        crashes (SIGSEGV) on its first inference (measured here; see ops/bench/RESULTS.md)."""
        return None if self.cache_dir is None else Path(self.cache_dir) / self.precision

    def compile_config(self) -> dict:
        if self.precision in PRECISIONS:
            hint = PRECISIONS[self.precision]
        elif is_quantized(self.precision):
            hint = F32  # the int8 encoder's float parts and the decoder
        else:
            raise ValueError(
                f"unknown precision profile {self.precision!r}; choose from "
                f"{sorted(PRECISIONS)} or an int8 profile made by `python -m models.quantize`"
            )
        config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
        if self.threads > 0:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        config.update(CoreBinding(self.cores).openvino_config())
        return config


@cache
def _core(cache_dir: str | None) -> ov.Core:
    core = ov.Core()
    if cache_dir:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        core.set_property({"CACHE_DIR": cache_dir})
    return core


class CompiledSam:
    """A SAM-family model ready to run: encode(image) -> embedding, decode(embedding, boxes) -> logits.

    `parts` says each part's precision; without it, both parts run at settings.precision (an int8 profile: its
    encoder, f32 decoder)."""

    def __init__(self, spec: ModelSpec, settings: RuntimeSettings, parts: PartPrecision | None = None):
        started = time.perf_counter()
        if parts is None:
            quantized = is_quantized(settings.precision)
            parts = PartPrecision(settings.precision, F32 if quantized else settings.precision)
        if is_quantized(parts.decoder):
            raise ValueError(f"decoder precision {parts.decoder!r}: int8 profiles quantize the encoder only")
        self.spec = spec
        self.settings = settings
        self.precision = parts
        self.encoder_xml = spec.encoder_xml
        self.sha256 = spec.sha256  # provenance: the bytes of the weights that actually run
        if is_quantized(parts.encoder):
            self.encoder_xml = profile_encoder(spec.encoder_xml.parent, parts.encoder)
            self.sha256 = combined_sha256(self.encoder_xml.with_suffix(".bin"), spec.decoder_xml.with_suffix(".bin"))
        self.compiled_encoder = self._compile(self.encoder_xml, replace(settings, precision=parts.encoder))
        self.compiled_decoder = self._compile(spec.decoder_xml, replace(settings, precision=parts.decoder))
        self._encoder = self.compiled_encoder.create_infer_request()
        self._decoder = self.compiled_decoder.create_infer_request()
        self.load_seconds = time.perf_counter() - started

    @staticmethod
    def _compile(xml: Path, settings: RuntimeSettings) -> ov.CompiledModel:
        core = _core(str(settings.precision_cache_dir) if settings.cache_dir else None)
        return core.compile_model(str(xml), "CPU", settings.compile_config())

    def runtime(self) -> dict[str, dict[str, int]]:
        """Per part, how many compiled nodes run in each element type (what really runs on this CPU)."""
        return {
            "encoder": runtime_precisions(self.compiled_encoder),
            "decoder": runtime_precisions(self.compiled_decoder),
        }

    def encode(self, image: np.ndarray) -> np.ndarray:
        """(1, 3, S, S) float32 -> (1, C, h, w) float32 embedding (an owned copy)."""
        self._encoder.infer([image])
        return np.array(self._encoder.get_output_tensor(0).data, copy=True)

    def decode(self, embedding: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Embedding + (B, 4) model-input boxes -> (B, 1, L, L) float32 low-res logits (an owned copy)."""
        self._decoder.infer([embedding, np.ascontiguousarray(boxes, dtype=np.float32)])
        return np.array(self._decoder.get_output_tensor(0).data, copy=True)


def runtime_precisions(compiled: ov.CompiledModel) -> dict[str, int]:
    """How many of the compiled graph's nodes run in each element type (e.g. proves bf16 really runs bf16)."""
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "runtimePrecision" in info:
            name = info["runtimePrecision"].astype(str)
            counts[name] = counts.get(name, 0) + 1
    return counts
