"""The strategies and views, defined once: the names (Literal types), and one table of what each strategy is.

Routing (which strategy a route runs, how many views), precision (profiles per strategy), the time budget (a
study's work counts its views), fan-out (which strategies split across workers, into which views), the engine
identity (the strategies a route can take) and the engine (which implementation runs, along which axes) all read
these tables; none of them spells a strategy or a view.

A new strategy: a row in STRATEGIES here, its implementation in worker/engine/strategies.py (IMPLEMENTATIONS),
and `strategy_3d = "<name>"` in a routing table section (worker/routing.toml) to run it.

Standard library only (the precision module, which reads it, promises no numpy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Strategy = Literal["box2d", "propagate", "triview"]
View = Literal["axial", "coronal", "sagittal"]

BOX2D: Strategy = "box2d"
PROPAGATE: Strategy = "propagate"
TRIVIEW: Strategy = "triview"
AXIAL: View = "axial"
CORONAL: View = "coronal"
SAGITTAL: View = "sagittal"


@dataclass(frozen=True)
class ViewAxes:
    """One slice direction of a (z, y, x) volume: the axes permutation that makes it the first axis, and the
    order of a 3D box's six numbers [x_min, y_min, z_min, x_max, y_max, z_max] seen in that view."""

    name: View
    axes: tuple[int, int, int]
    box_order: tuple[int, int, int, int, int, int]


VIEWS: dict[View, ViewAxes] = {
    AXIAL: ViewAxes(AXIAL, (0, 1, 2), (0, 1, 2, 3, 4, 5)),
    CORONAL: ViewAxes(CORONAL, (1, 0, 2), (0, 2, 1, 3, 5, 4)),  # slices img[:, y, :], box [x, z, y]
    SAGITTAL: ViewAxes(SAGITTAL, (2, 0, 1), (1, 2, 0, 4, 5, 3)),  # slices img[:, :, x], box [y, z, x]
}


@dataclass(frozen=True)
class StrategySpec:
    """What a strategy is, as every layer needs to know it.

    views: the slice directions it runs (box2d: the image itself, counted as one view); a study's time budget
        and memory estimate count them, and a split study sends one task per view beyond the first.
    three_d: it runs volumes only (a route's `strategy_3d`); else it is the 2D strategy.
    splittable: a study of it may be split across workers (worker.fanout).
    """

    name: Strategy
    views: tuple[View, ...]
    three_d: bool
    splittable: bool

    @property
    def view_count(self) -> int:
        return len(self.views)


STRATEGIES: dict[Strategy, StrategySpec] = {
    BOX2D: StrategySpec(BOX2D, (AXIAL,), three_d=False, splittable=False),
    PROPAGATE: StrategySpec(PROPAGATE, (AXIAL,), three_d=True, splittable=True),
    TRIVIEW: StrategySpec(TRIVIEW, (AXIAL, CORONAL, SAGITTAL), three_d=True, splittable=True),
}
STRATEGY_NAMES: tuple[Strategy, ...] = tuple(STRATEGIES)
STRATEGIES_3D: tuple[Strategy, ...] = tuple(name for name, spec in STRATEGIES.items() if spec.three_d)
STRATEGY_2D: Strategy = next(name for name, spec in STRATEGIES.items() if not spec.three_d)
MAX_VIEWS = max(spec.view_count for spec in STRATEGIES.values())  # what a study whose route is unknown may take
