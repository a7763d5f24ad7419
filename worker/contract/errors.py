"""The error a study's own input raises (reported for that study alone, never retried), and the one helper that
says in a line what a pydantic validation found wrong."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError


class StudyError(ValueError):
    """A problem with one study's input: reported for that study alone, never retried."""


def validation_message(
    error: ValidationError, whole: str = "message", name: Callable[[tuple[Any, ...]], str] | None = None, limit: int = 5
) -> str:
    """A pydantic ValidationError in one line for a person: `where: what; where: what (and N more)`.

    `whole`: what a problem of the whole value is called (an empty location); `name`: how a location is named
    (default: its steps joined by dots). The one place every record, message and setting says what is wrong.
    """
    parts = []
    for problem in error.errors()[:limit]:
        location = tuple(problem["loc"])
        where = (name(location) if name else ".".join(str(step) for step in location)) if location else whole
        parts.append(f"{where}: {problem['msg'].removeprefix('Value error, ')}")
    more = error.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
