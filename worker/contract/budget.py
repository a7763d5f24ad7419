"""A study's time budget: the Celery soft and hard limits, scaled to the work the study asks for.

The work is counted once, here, for the producer (which sets the limits when it sends the task): slices x views
(1 for 2D; 3 for tri-view, or for a 3D study whose route the producer cannot see) and boxes.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.contract.routing import MAX_VIEWS, Route
from worker.contract.study import Study


@dataclass(frozen=True)
class TimeBudget:
    """Soft/hard Celery time limits scaled to a study's size, the hard one capped at `ceiling`."""

    base: float = 300.0
    per_slice: float = 15.0
    per_box_slice: float = 0.5
    ceiling: float = 21600.0  # no study runs longer than this

    def limits(self, slices: int, boxes: int, views: int = 1) -> tuple[int, int]:
        """(soft, hard) seconds for a study of `slices` slices (1 for 2D) and `boxes` boxes."""
        work = slices * views
        soft = self.base + self.per_slice * work + self.per_box_slice * boxes * work
        hard = soft * 1.1 + 60
        if hard > self.ceiling:
            hard = self.ceiling
            soft = min(soft, hard - 60)
        return int(soft), int(hard)


def study_work(study: Study, route: Route | None) -> tuple[int, int, int]:
    """(slices, boxes, views) of a study for its time budget; a 3D study of unknown route counts MAX_VIEWS."""
    boxes = len(study.prompts)
    if not study.is_3d:  # 2D (or malformed: the worker says what is wrong)
        return 1, boxes, 1
    views = route.views(True) if route is not None else MAX_VIEWS
    return int(study.image.shape[0]), boxes, views
