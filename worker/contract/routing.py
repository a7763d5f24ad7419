"""The declarative routing table: modality -> model + strategy + settings (see routing.toml)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from worker.contract.precision import PrecisionTable
from worker.contract.strategies import MAX_VIEWS, PROPAGATE, STRATEGIES, STRATEGIES_3D, STRATEGY_2D, Strategy

__all__ = ["MAX_VIEWS", "Route", "RoutingTable"]  # MAX_VIEWS: worker.contract.strategies, for the budget

DEFAULT_ROUTING = Path(__file__).parents[1] / "routing.toml"  # worker/routing.toml, the file users edit
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
    strategy_3d: Strategy  # one of STRATEGIES_3D (checked when the table is read)
    margin: float
    interpolation_2d: str
    interpolation_3d: str
    box_rounding_2d: str
    box_rounding_3d: str
    overlap: str

    def strategy(self, is_3d: bool) -> Strategy:
        return self.strategy_3d if is_3d else STRATEGY_2D

    def views(self, is_3d: bool) -> int:
        """How many views (axial; coronal and sagittal too for tri-view) a study of this route runs."""
        return STRATEGIES[self.strategy(is_3d)].view_count

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
        """The table in `path` (None: the shipped worker/routing.toml); worker.contract.settings.routing_file says
        which file a worker uses ($LITEMEDSAM_ROUTING)."""
        data = tomllib.loads(Path(path or DEFAULT_ROUTING).read_text())
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
            strategy_3d=entry.get("strategy_3d", PROPAGATE),
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
