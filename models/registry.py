"""The models a worker can run: each is an OpenVINO IR pair plus the conventions it was trained with.

A model lives in `<models_dir>/<name>/` with a `manifest.json` (written by `python -m models.export` for the
built-in LiteMedSAM, or by `python -m models.register` for a model a user brings, e.g. EfficientViT-SAM).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

MANIFEST = "manifest.json"
NORMALISATIONS = ("minmax",)
BOX_CONVENTIONS = ("xyxy",)


@dataclass(frozen=True)
class ModelSpec:
    """Everything the engine needs to run one model; no OpenVINO objects here."""

    name: str
    encoder_xml: Path
    decoder_xml: Path
    input_size: int
    logits_size: int
    normalisation: str
    box_convention: str
    sha256: str


def combined_sha256(*paths: Path) -> str:
    """sha256 over the bytes of several files, in order (the model's identity in provenance)."""
    digest = hashlib.sha256()
    for path in paths:
        with Path(path).open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    return combined_sha256(path)


def spec_from_manifest(model_dir: Path) -> ModelSpec:
    data = json.loads((model_dir / MANIFEST).read_text())
    return ModelSpec(
        name=data["name"],
        encoder_xml=model_dir / data["encoder"]["xml"],
        decoder_xml=model_dir / data["decoder"]["xml"],
        input_size=int(data["input_size"]),
        logits_size=int(data.get("logits_size", 256)),
        normalisation=data.get("normalisation", "minmax"),
        box_convention=data.get("box_convention", "xyxy"),
        sha256=data["sha256"],
    )


def load_registry(models_dir: Path) -> dict[str, ModelSpec]:
    """All models with a manifest under models_dir, by name."""
    specs = {}
    for manifest in sorted(Path(models_dir).glob(f"*/{MANIFEST}")):
        spec = spec_from_manifest(manifest.parent)
        specs[spec.name] = spec
    return specs


def register_model(
    models_dir: Path,
    name: str,
    encoder_xml: Path,
    decoder_xml: Path,
    input_size: int,
    logits_size: int = 256,
    normalisation: str = "minmax",
    box_convention: str = "xyxy",
) -> ModelSpec:
    """Copy a user's IR pair (xml + bin each) into the registry and write its manifest.

    The decoder must take inputs (image_embeddings, boxes (B, 4) in model-input pixels) and return
    low-res logits (B, 1, L, L); the encoder takes (1, 3, S, S) min-max normalised RGB.
    """
    if normalisation not in NORMALISATIONS or box_convention not in BOX_CONVENTIONS:
        raise ValueError(f"unsupported normalisation/box convention {normalisation}/{box_convention}")
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"model name must be letters, digits, '-' or '_': {name!r}")
    target = Path(models_dir) / name
    target.mkdir(parents=True, exist_ok=True)
    parts = {}
    for role, xml in (("encoder", Path(encoder_xml)), ("decoder", Path(decoder_xml))):
        bin_path = xml.with_suffix(".bin")
        for src, dst in ((xml, target / f"{role}.xml"), (bin_path, target / f"{role}.bin")):
            if not src.is_file():
                raise FileNotFoundError(f"{role}: {src} not found (an IR is an .xml with its .bin)")
            shutil.copyfile(src, dst)
        parts[role] = {
            "xml": f"{role}.xml",
            "bin": f"{role}.bin",
            "xml_sha256": file_sha256(target / f"{role}.xml"),
            "bin_sha256": file_sha256(target / f"{role}.bin"),
        }
    manifest = {
        "format": 1,
        "name": name,
        "input_size": int(input_size),
        "normalisation": normalisation,
        "box_convention": box_convention,
        "logits_size": int(logits_size),
        "encoder": parts["encoder"],
        "decoder": parts["decoder"],
        "sha256": combined_sha256(target / "encoder.bin", target / "decoder.bin"),
        "source": {"registered_from": [str(encoder_xml), str(decoder_xml)]},
        "exported_at": datetime.now(timezone.utc).isoformat(),
    }
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return spec_from_manifest(target)
