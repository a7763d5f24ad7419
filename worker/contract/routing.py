"""The declarative routing table: modality -> model + strategy + settings (see routing.toml)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from worker.contract.precision import PrecisionTable

DEFAULT_ROUTING = Path(__file__).parents[1] / "routing.toml"  # worker/routing.toml, the file users edit
ENV_VAR = "LITEMEDSAM_ROUTING"
STRATEGIES_3D = ("propagate", "triview")
VIEWS = {"box2d": 1, "propagate": 1, "triview": 3}  # how many views (slice directions) each strategy runs
MAX_VIEWS = max(VIEWS.values())  # what a study whose route is unknown may take
INTERPOLATIONS = ("linear", "area")
BOX_ROUNDINGS = ("truncate", "fractional")  # truncate: int(coord * S / max(h, w)), the official baseline's
OVERLAP_RULES = ("smaller", "later")  # worker/engine/overlap.py says what each means
# Settings that differ between 2D images and 3D volumes: key -> (2D default, 3D default). The 2D defaults are the
# official baseline's own pre-processing (INTER_AREA, truncated boxes: its 2D masks exactly); 3D propagation keeps
# INTER_LINEAR and fractional boxes, which measured better on the CT and MR volumes (ops/bench/RESULTS.md).
PER_DIMENSION = {"interpolation": ("area", "linear"), "box_rounding": ("truncate", "fractional")}
CHOICES = {
    "strategy_3d": STRATEGIES_3D,
    "overlap": OVERLAP_RULES,
    **{f"interpolation_{dim}": INTERPOLATIONS for dim in ("2d", "3d")},
    **{f"box_rounding_{dim}": BOX_ROUNDINGS for dim in ("2d", "3d")},
}


@dataclass(frozen=True)
class Route:
    modality: str
    models: tuple[str, ...]
    strategy_3d: str
    margin: float
    interpolation_2d: str
    interpolation_3d: str
    box_rounding_2d: str
    box_rounding_3d: str
    overlap: str

    def strategy(self, is_3d: bool) -> str:
        return self.strategy_3d if is_3d else "box2d"

    def views(self, is_3d: bool) -> int:
        """How many views (axial; coronal and sagittal too for tri-view) a study of this route runs."""
        return VIEWS[self.strategy(is_3d)]

    def interpolation(self, is_3d: bool) -> str:
        """The longest-side resize of the image (or of each slice)."""
        return self.interpolation_3d if is_3d else self.interpolation_2d

    def box_rounding(self, is_3d: bool) -> str:
        """How the study's boxes become model-input pixels."""
        return self.box_rounding_3d if is_3d else self.box_rounding_2d

    def pick_model(self, available: Iterable[str]) -> str:
        present = set(available)
        for name in self.models:
            if name in present:
                return name
        raise LookupError(
            f"none of the models routed for {self.modality} ({', '.join(self.models)}) is registered; "
            "run `python -m models.export` (LiteMedSAM) or `python -m models.register`"
        )


def expand_per_dimension(entry: dict[str, Any]) -> dict[str, Any]:
    """One table section with a plain `interpolation = "..."` (or `box_rounding`) applying it to both dimensions,
    unless the section names that dimension's own key (`interpolation_2d`, `interpolation_3d`)."""
    entry = dict(entry)
    for key in PER_DIMENSION:
        if key in entry:
            value = entry.pop(key)
            for suffix in ("_2d", "_3d"):
                entry.setdefault(key + suffix, value)
    return entry


class RoutingTable:
    def __init__(
        self, default: dict[str, Any], per_modality: dict[str, dict[str, Any]], precision: dict[str, Any] | None = None
    ):
        self._default = expand_per_dimension(default)
        self.precision = PrecisionTable.from_routing(precision or {})  # [precision.*]: named profiles
        self._modalities = {name.lower(): expand_per_dimension(entry) for name, entry in per_modality.items()}
        for name in [None, *self._modalities]:
            self.route(name or "default")  # validate every entry up front

    @classmethod
    def load(cls, path: Path | None = None) -> RoutingTable:
        path = Path(path or os.environ.get(ENV_VAR) or DEFAULT_ROUTING)
        data = tomllib.loads(path.read_text())
        return cls(data.get("default", {}), data.get("modality", {}), data.get("precision", {}))

    def route(self, modality: str) -> Route:
        entry = {**self._default, **self._modalities.get(modality.lower(), {})}
        per_dimension = {
            f"{key}_{dim}": str(entry.get(f"{key}_{dim}", default))
            for key, defaults in PER_DIMENSION.items()
            for dim, default in zip(("2d", "3d"), defaults)
        }
        route = Route(
            modality=modality,
            models=tuple(entry.get("models", ("litemedsam",))),
            strategy_3d=str(entry.get("strategy_3d", "propagate")),
            margin=float(entry.get("margin", 3.0)),
            overlap=str(entry.get("overlap", "smaller")),
            **per_dimension,
        )
        for name, allowed in CHOICES.items():
            value = getattr(route, name)
            if value not in allowed:
                raise ValueError(f"routing for {modality}: unknown {name} {value!r}; choose from {', '.join(allowed)}")
        if not route.models:
            raise ValueError(f"routing for {modality}: no models listed")
        return route
