"""The declarative routing table: modality -> model + strategy + settings (see routing.toml)."""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from worker.precision import PrecisionTable

DEFAULT_ROUTING = Path(__file__).with_name("routing.toml")
ENV_VAR = "LITEMEDSAM_ROUTING"
STRATEGIES_3D = ("propagate", "triview")
INTERPOLATIONS = ("linear", "area")


@dataclass(frozen=True)
class Route:
    modality: str
    models: tuple[str, ...]
    strategy_3d: str
    margin: float
    interpolation: str

    def strategy(self, is_3d: bool) -> str:
        return self.strategy_3d if is_3d else "box2d"

    def pick_model(self, available: Iterable[str]) -> str:
        present = set(available)
        for name in self.models:
            if name in present:
                return name
        raise LookupError(
            f"none of the models routed for {self.modality} ({', '.join(self.models)}) is registered; "
            "run `python -m models.export` (LiteMedSAM) or `python -m models.register`"
        )


class RoutingTable:
    def __init__(self, default: dict[str, Any], per_modality: dict[str, dict[str, Any]],
                 precision: dict[str, Any] | None = None):
        self._default = default
        self.precision = PrecisionTable.from_routing(precision or {})  # [precision.*]: named profiles
        self._modalities = {name.lower(): dict(entry) for name, entry in per_modality.items()}
        for name in [None, *self._modalities]:
            self.route(name or "default")  # validate every entry up front

    @classmethod
    def load(cls, path: Path | None = None) -> "RoutingTable":
        path = Path(path or os.environ.get(ENV_VAR) or DEFAULT_ROUTING)
        data = tomllib.loads(path.read_text())
        return cls(data.get("default", {}), data.get("modality", {}), data.get("precision", {}))

    def route(self, modality: str) -> Route:
        entry = {**self._default, **self._modalities.get(modality.lower(), {})}
        route = Route(
            modality=modality,
            models=tuple(entry.get("models", ("litemedsam",))),
            strategy_3d=str(entry.get("strategy_3d", "propagate")),
            margin=float(entry.get("margin", 3.0)),
            interpolation=str(entry.get("interpolation", "linear")),
        )
        if route.strategy_3d not in STRATEGIES_3D:
            raise ValueError(f"routing for {modality}: unknown strategy_3d {route.strategy_3d!r}")
        if route.interpolation not in INTERPOLATIONS:
            raise ValueError(f"routing for {modality}: unknown interpolation {route.interpolation!r}")
        if not route.models:
            raise ValueError(f"routing for {modality}: no models listed")
        return route
