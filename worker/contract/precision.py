"""Precision profiles: the element type each model part (encoder, decoder) runs in, per strategy.

A profile is a named section of the routing table (routing.toml):

    [precision.bf16-encoder]          # every strategy: bf16 encoder, f32 decoder
    encoder = "bf16"
    decoder = "f32"

    [precision.bf16-encoder-3d]       # f32 everywhere except the propagation's encoder
    propagate = { encoder = "bf16" }

Part precisions: "f32", "bf16" (OpenVINO's inference precision hint), or, for the encoder only, an INT8 profile
made by `python -m models.quantize --profile NAME` (its name starts with "int8"). Every INT8 encoder listed in a
model's manifest is also a profile of its own (that encoder, f32 decoder) unless the table names one the same.
"f32" always exists (f32 everywhere) and is the default; "fast" is not a profile but a request: the fastest
profile that passed `worker calibrate` on this host's instruction set, else f32 (worker.calibration).

Only the standard library: the producer and the worker's parent process read profiles without OpenVINO.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from worker.contract.strategies import STRATEGY_NAMES

PARTS = ("encoder", "decoder")
FloatPrecision = Literal["f32", "bf16"]  # a part's float precision (INT8 encoders are named profiles: int8*)
F32: FloatPrecision = "f32"
BF16: FloatPrecision = "bf16"
FLOAT_PRECISIONS: tuple[FloatPrecision, ...] = (F32, BF16)
QUANTIZED_PREFIX = "int8"  # models.quantize.PROFILE_PREFIX (not imported: that module imports numpy)
DEFAULT_PROFILE = F32
FAST = "fast"


@dataclass(frozen=True)
class PartPrecision:
    """What one strategy runs: the encoder's and the decoder's precision."""

    encoder: str = F32
    decoder: str = F32

    def as_dict(self) -> dict[str, str]:
        return {"encoder": self.encoder, "decoder": self.decoder}

    def label(self) -> str:
        return f"encoder {self.encoder}, decoder {self.decoder}"


def _part(value: Any, base: PartPrecision, where: str) -> PartPrecision:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a table of encoder/decoder precisions, got {value!r}")
    unknown = set(value) - set(PARTS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; use encoder and decoder")
    parts = PartPrecision(str(value.get("encoder", base.encoder)), str(value.get("decoder", base.decoder)))
    for role in PARTS:
        precision = getattr(parts, role)
        quantized = precision.startswith(QUANTIZED_PREFIX)
        if precision not in FLOAT_PRECISIONS and not quantized:
            raise ValueError(
                f"{where}: {role} precision {precision!r} is not one of {list(FLOAT_PRECISIONS)} "
                f"or an int8 profile made by `python -m models.quantize`"
            )
        if quantized and role == "decoder":
            raise ValueError(f"{where}: int8 profiles quantize the encoder only; the decoder runs f32 or bf16")
    return parts


@dataclass(frozen=True)
class PrecisionProfile:
    name: str
    default: PartPrecision = PartPrecision()
    per_strategy: tuple[tuple[str, PartPrecision], ...] = ()

    def parts(self, strategy: str) -> PartPrecision:
        return dict(self.per_strategy).get(strategy, self.default)

    def distinct_parts(self) -> list[PartPrecision]:
        return list(dict.fromkeys(self.parts(strategy) for strategy in STRATEGY_NAMES))

    def as_dict(self) -> dict[str, dict[str, str]]:
        """Strategy -> {encoder, decoder}: the profile's definition, as recorded by a calibration."""
        return {strategy: self.parts(strategy).as_dict() for strategy in STRATEGY_NAMES}

    def quantized_encoders(self) -> list[str]:
        return sorted({p.encoder for p in self.distinct_parts() if p.encoder.startswith(QUANTIZED_PREFIX)})

    def is_f32(self) -> bool:
        return all(p == PartPrecision() for p in self.distinct_parts())

    def describe(self) -> str:
        if len(self.distinct_parts()) == 1:
            return self.default.label()
        return "; ".join(f"{s}: {self.parts(s).label()}" for s in STRATEGY_NAMES)

    @classmethod
    def from_table(cls, name: str, entry: dict[str, Any]) -> PrecisionProfile:
        where = f"routing table [precision.{name}]"
        unknown = set(entry) - set(PARTS) - set(STRATEGY_NAMES)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; use {list(PARTS + STRATEGY_NAMES)}")
        default = _part({k: v for k, v in entry.items() if k in PARTS}, PartPrecision(), where)
        per_strategy = tuple(
            (strategy, _part(entry[strategy], default, f"{where} {strategy}"))
            for strategy in STRATEGY_NAMES
            if strategy in entry
        )
        return cls(name, default, per_strategy)


class PrecisionTable:
    """The profiles a worker or embedded run can select by name."""

    def __init__(self, profiles: dict[str, PrecisionProfile]):
        self._profiles = {DEFAULT_PROFILE: PrecisionProfile(DEFAULT_PROFILE), **profiles}
        if not self._profiles[DEFAULT_PROFILE].is_f32():
            raise ValueError("routing table [precision.f32] must be f32 everywhere (it is the reproducible default)")

    @classmethod
    def from_routing(cls, section: dict[str, Any]) -> PrecisionTable:
        if FAST in section:
            raise ValueError(f"routing table: [precision.{FAST}] is reserved (it selects a calibrated profile)")
        return cls({name: PrecisionProfile.from_table(name, dict(entry)) for name, entry in section.items()})

    def with_quantized(self, encoders: Iterable[str]) -> PrecisionTable:
        """Add a profile per INT8 encoder made by models.quantize (that encoder, f32 decoder) unless named."""
        extra = {
            name: PrecisionProfile(name, PartPrecision(name, "f32")) for name in encoders if name not in self._profiles
        }
        return PrecisionTable({**self._profiles, **extra})

    def names(self) -> list[str]:
        return list(self._profiles)

    def get(self, name: str) -> PrecisionProfile:
        if name not in self._profiles:
            raise ValueError(
                f"unknown precision profile {name!r}; choose from {self.names() + [FAST]} (profiles "
                "are [precision.*] sections of the routing table; int8 ones are made by "
                "`python -m models.quantize`)"
            )
        return self._profiles[name]


@dataclass(frozen=True)
class ProfileChoice:
    """The profile an engine runs, what was asked for, and why this one (a `fast` request says which it chose)."""

    profile: PrecisionProfile
    requested: str
    reason: str = ""

    @property
    def name(self) -> str:
        return self.profile.name
