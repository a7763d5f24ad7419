"""StudySource <-> JSON for the batch manifest, so another process can write a batch's outputs.

Driven by the dataclass type hints (Path, tuples, optional nested dataclasses, plain values), so a field
added to StudySource (or to a dataclass it holds) round-trips without changes here.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from producer.formats.base import StudySource


def to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [to_json(item) for item in value]
    return value


def from_json(hint: Any, data: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if data is None:
        return None
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        return from_json(options[0], data) if len(options) == 1 else data
    if origin in (tuple, list):
        item = args[0] if args else Any
        return origin(from_json(item, element) for element in data)
    if hint is Path:
        return Path(data)
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return hint(
            **{f.name: from_json(hints[f.name], data[f.name]) for f in dataclasses.fields(hint) if f.name in data}
        )
    return data


def source_to_json(source: StudySource) -> dict[str, Any]:
    return to_json(source)


def source_from_json(data: dict[str, Any]) -> StudySource:
    return from_json(StudySource, data)
