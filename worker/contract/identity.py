"""Content addressing: what a result depends on, hashed into its key.

A study's result key is the hash of its image content, its boxes, its modality, and the identity of the
engine route that segments it (sha256 of the weights that run, the precision profile and, per strategy the route
can take, the precision each model part runs at, strategy and its settings, package version). Each worker process
computes it from the engine it built and publishes that identity to Redis
(worker.directory), so the producer, which has no models, computes the same key and finds a stored result
before enqueuing.

Only numpy, pydantic and the standard library: the producer imports this.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import tomllib
from pydantic import BaseModel, ConfigDict, Field

from worker.contract.prompts import Prompts
from worker.contract.routing import Route, RoutingTable
from worker.contract.settings import routing_file as resolve_routing_file
from worker.contract.strategies import STRATEGY_2D

KEY_VERSION = 1


def image_digest(image: np.ndarray) -> str:
    """sha256 of dtype, shape and bytes of an image (the input blob's name)."""
    digest = hashlib.sha256()
    digest.update(f"{image.dtype.str}|{image.shape}|".encode())
    if image.size:  # a zero-size array has no buffer to view (the worker then says the image is empty)
        digest.update(np.ascontiguousarray(image).data.cast("B"))
    return digest.hexdigest()


def boxes_digest(boxes: np.ndarray) -> str:
    boxes = np.ascontiguousarray(boxes)
    return hashlib.sha256(f"{boxes.dtype.str}|{boxes.shape}|".encode() + boxes.tobytes()).hexdigest()


def prompts_digest(prompts: Prompts) -> dict[str, str]:
    """What a result key says about the prompts: box-only voxel prompts are their box array's digest (keys made
    before Prompts existed stay valid); any others (clicks, labels without a box, mm) the digest of all of them."""
    if prompts.boxes_only:
        return {"boxes": boxes_digest(prompts.box_array())}
    data = [
        [list(label.box.coords) if label.box else None, label.box.space if label.box else None]
        for label in prompts.labels
    ]
    whole = {"dims": prompts.dims, "boxes": data, "clicks": prompts.clicks_digest_data()}
    return {"prompts": hashlib.sha256(_canonical(whole)).hexdigest()}


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


class EngineIdentity(BaseModel):
    """Everything about a worker's engine that changes its masks (JSON: model_dump_json / model_validate_json)."""

    model_config = ConfigDict(frozen=True)

    precision: str
    package_version: str
    models: dict[str, str]  # registered model name -> sha256
    routing: dict[str, Any] = Field(default_factory=dict)  # {"default": {...}, "modality": {...}} as in routing.toml
    # model -> strategy -> {"encoder": precision, "decoder": precision, "sha256": weights that run}
    # (Engine.precision_identity); empty in identities published before per-part precision existed
    parts: dict[str, dict[str, dict[str, str]]] = Field(default_factory=dict)

    def route(self, modality: str) -> Route:
        """The route a study of this modality takes on this engine (ValueError if the routing is broken)."""
        return RoutingTable(self.routing.get("default", {}), self.routing.get("modality", {})).route(modality)

    def route_identity(self, modality: str) -> dict[str, Any]:
        """What segments a study of this modality; raises LookupError if its routed models are all missing."""
        route = self.route(modality)
        model = route.pick_model(self.models)
        identity = {
            "model": model,
            "model_sha256": self.models[model],
            "precision": self.precision,
            "strategy_3d": route.strategy_3d,
            "margin": route.margin,
            "interpolation_2d": route.interpolation_2d,
            "interpolation_3d": route.interpolation_3d,
            "box_rounding_2d": route.box_rounding_2d,
            "box_rounding_3d": route.box_rounding_3d,
            "overlap": route.overlap,
            "package_version": self.package_version,
        }
        if model in self.parts:  # what each part runs at, for the strategies a study of this modality can take
            identity["parts"] = {strategy: self.parts[model][strategy] for strategy in (STRATEGY_2D, route.strategy_3d)}
        return identity

    def result_key(self, image_sha: str, prompts: Prompts | np.ndarray, modality: str) -> str:
        """The content key of a study's result (`prompts`: a Prompts value, or the challenge's box array)."""
        payload = {
            "v": KEY_VERSION,
            "image": image_sha,
            **prompts_digest(prompts if isinstance(prompts, Prompts) else Prompts.from_boxes(prompts)),
            "modality": modality,
            "engine": self.route_identity(modality),
        }
        return hashlib.sha256(_canonical(payload)).hexdigest()

    def fingerprint(self) -> str:
        return hashlib.sha256(_canonical(self.model_dump())).hexdigest()[:16]


def routing_data(routing_file: Path | None) -> dict[str, Any]:
    """The routing table as data, resolved the way RoutingTable.load resolves its file."""
    data = tomllib.loads(resolve_routing_file(routing_file).read_text())
    return {"default": data.get("default", {}), "modality": data.get("modality", {})}
