"""Which precision profile an engine runs, when it is asked for one by name: the profiles of the routing table
plus every INT8 encoder the registered models list (models.quantize).

`fast` is not a profile but a request that depends on this host's calibration record, a worker matter
(worker.calibration.choose_profile): whoever builds an engine that may be asked for `fast` passes that chooser
(Engine(settings, choose_profile=...)); the engine itself only knows named profiles. No OpenVINO here: a
worker's parent process checks profiles with it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from models.registry import ModelSpec
from worker.contract.precision import FAST, PrecisionTable, ProfileChoice
from worker.contract.routing import RoutingTable

ProfileChooser = Callable[[str, RoutingTable, Path, dict[str, ModelSpec]], ProfileChoice]


def int8_weights(registry: dict[str, ModelSpec]) -> dict[str, str]:
    """INT8 encoder profiles listed by the registered models: profile name -> sha256 of its encoder."""
    from models.quantize import listed_profiles

    weights: dict[str, str] = {}
    for spec in registry.values():
        weights.update(listed_profiles(spec.encoder_xml.parent))
    return weights


def profile_table(routing: RoutingTable, registry: dict[str, ModelSpec]) -> PrecisionTable:
    """The routing table's profiles plus the registered models' INT8 encoders."""
    return routing.precision.with_quantized(int8_weights(registry))


def named_profile(
    requested: str, routing: RoutingTable, models_dir: Path, registry: dict[str, ModelSpec]
) -> ProfileChoice:
    """The profile called `requested` (ValueError for an unknown one, and for `fast`, which needs the host's
    calibration record: worker.calibration.choose_profile resolves it)."""
    if requested == FAST:
        raise ValueError(
            "--precision fast is resolved against this host's calibration record by whoever builds the engine "
            "(worker.calibration.choose_profile); this engine was built without it"
        )
    return ProfileChoice(profile_table(routing, registry).get(requested), requested)
