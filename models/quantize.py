"""INT8 profile: NNCF post-training static quantization of the LiteMedSAM image encoder (the decoder stays f32).

    python -m models.quantize [--models-dir DIR] [--calibration PATH ...] [--slices 32] [--variant NAME]
                              [--profile int8] [--force] [--check]

Runs in the runtime venv with the `quantize` extra (`pip install -e .[quantize]`: nncf); torch is not needed.
Reads the exported f32 IR (<models_dir>/litemedsam/encoder.xml), calibrates on slices the project generates itself
(models.phantoms, the default) or on challenge-format npz files / folders the user gives with --calibration
(`imgs` of 2D images or 3D volumes), writes encoder_<profile>.xml/.bin beside the f32 IR and records them in
manifest.json under "profiles": {"<profile>": {"encoder": {xml, bin, xml_sha256, bin_sha256}, ...}}, together
with the f32 encoder's sha256 it was made from (a re-export makes it stale, and `--check` says so).
The f32 entries of the manifest are not touched, so models.export's is_up_to_date still holds.

The engine runs it with precision "<profile>" (EngineSettings(precision="int8")); it checks the sha256 of the
profile's files against the manifest before compiling.

Variants (which layers stay in floating point; see ops/bench/RESULTS.md for what each measured):
  plain        every Convolution/MatMul quantized (NNCF defaults, performance preset)
  transformer  NNCF's recipe for transformer models (model_type=TRANSFORMER)
  sensitive    transformer + the first convolution (raw image input), the patch embedding and the neck in f32
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from models.paths import default_models_dir
from models.registry import file_sha256

MODEL_NAME = "litemedsam"
VARIANTS = ("plain", "transformer", "sensitive")
DEFAULT_VARIANT = "transformer"
DEFAULT_SLICES = 32
PROFILE_PREFIX = "int8"


# ---------------------------------------------------------------- manifest (stdlib + numpy only)


def read_manifest(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "manifest.json").read_text())


def write_manifest(model_dir: Path, manifest: dict) -> None:
    """Atomic replace: a reader never sees half a manifest."""
    model_dir = Path(model_dir)
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", dir=model_dir)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(manifest, indent=2) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, model_dir / "manifest.json")


class ProfileError(RuntimeError):
    pass


def profile_encoder(model_dir: Path, profile: str, verify: bool = True) -> Path:
    """The encoder xml of a quantized profile, after checking its files against the manifest's sha256."""
    model_dir = Path(model_dir)
    try:
        entry = read_manifest(model_dir)["profiles"][profile]
    except (OSError, ValueError, KeyError) as err:
        raise ProfileError(
            f"precision profile {profile!r} is not in {model_dir / 'manifest.json'}; create it with "
            f"`python -m models.quantize --profile {profile}` (needs the quantize extra: nncf)"
        ) from err
    encoder = entry["encoder"]
    if verify:
        for kind in ("xml", "bin"):
            path = model_dir / encoder[kind]
            if not path.is_file() or file_sha256(path) != encoder[f"{kind}_sha256"]:
                raise ProfileError(
                    f"{path} is missing or does not match the sha256 in the manifest; "
                    f"re-run `python -m models.quantize --profile {profile} --force`"
                )
    return model_dir / encoder["xml"]


def listed_profiles(model_dir: Path) -> dict[str, str]:
    """INT8 encoders listed in a model's manifest: profile name -> the encoder .bin's sha256 (not re-hashed here;
    profile_encoder checks the files before anything compiles them)."""
    try:
        profiles = read_manifest(model_dir).get("profiles", {})
    except (OSError, ValueError):
        return {}
    return {
        name: entry["encoder"]["bin_sha256"]
        for name, entry in profiles.items()
        if name.startswith(PROFILE_PREFIX) and isinstance(entry, dict) and "encoder" in entry
    }


def profile_status(model_dir: Path, profile: str) -> str:
    """'ok', 'missing', 'stale' (made from another f32 encoder) or 'corrupt'."""
    try:
        manifest = read_manifest(model_dir)
    except (OSError, ValueError):
        return "missing"
    entry = manifest.get("profiles", {}).get(profile)
    if not entry:
        return "missing"
    try:
        profile_encoder(model_dir, profile)
    except ProfileError:
        return "corrupt"
    if entry.get("from_encoder_bin_sha256") != manifest["encoder"]["bin_sha256"]:
        return "stale"
    return "ok"


# ---------------------------------------------------------------- calibration slices


def _volume_slices(imgs: np.ndarray, count: int) -> list[np.ndarray]:
    if imgs.ndim == 3 and imgs.shape[-1] != 3:  # (D, H, W) volume: spread over the depth
        picks = np.unique(np.linspace(0, imgs.shape[0] - 1, max(count, 1)).round().astype(int))
        return [imgs[z] for z in picks]
    return [imgs]


def calibration_images(sources: list[Path], total: int) -> tuple[list[np.ndarray], str]:
    """uint8 slices/images: from the user's npz files or folders, else from the project's phantoms."""
    arrays: list[np.ndarray] = []
    if sources:
        files: list[Path] = []
        for source in sources:
            files += sorted(Path(source).rglob("*.npz")) if Path(source).is_dir() else [Path(source)]
        for path in files:
            with np.load(path, allow_pickle=False) as npz:
                if "imgs" in npz.files:
                    arrays.append(npz["imgs"])
        described = f"user npz: {', '.join(str(s) for s in sources)} ({len(arrays)} files)"
    else:
        from models.phantoms import build_phantoms

        arrays = [phantom.imgs for phantom in build_phantoms()]
        described = "project phantoms (models.phantoms.build_phantoms)"
    if not arrays:
        raise SystemExit("no calibration images found (npz files with an 'imgs' array)")
    slices = [s for imgs in arrays for s in _volume_slices(imgs, total)]
    picks = np.unique(np.linspace(0, len(slices) - 1, min(total, len(slices))).round().astype(int))
    return [slices[i] for i in picks], described


def model_inputs(images: list[np.ndarray], size: int, interpolation: str = "linear") -> list[np.ndarray]:
    from models.preprocess import to_model_input

    return [to_model_input(np.ascontiguousarray(image), size, interpolation)[0] for image in images]


# ---------------------------------------------------------------- quantization


def ignored_scope(model, variant: str, patterns: list[str] | None = None):
    import nncf

    patterns = list(patterns or [])
    if variant in ("plain", "transformer"):
        return nncf.IgnoredScope(patterns=patterns, validate=False) if patterns else None
    names = []
    convs = [op for op in model.get_ordered_ops() if op.get_type_name() in ("Convolution", "GroupConvolution")]
    names += [op.get_friendly_name() for op in convs[:2]]  # patch embedding: the raw image goes in here
    names += [
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() == "Convolution" and "neck" in op.get_friendly_name()
    ]
    return nncf.IgnoredScope(names=names, patterns=patterns, validate=False)


def quantize_encoder(
    encoder_xml: Path,
    inputs: list[np.ndarray],
    variant: str,
    patterns: list[str] | None = None,
    preset: str = "performance",
):
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(encoder_xml))
    options = {
        "subset_size": len(inputs),
        "preset": nncf.QuantizationPreset.MIXED if preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
        "ignored_scope": ignored_scope(model, variant, patterns),
    }
    if variant in ("transformer", "sensitive"):
        options["model_type"] = nncf.ModelType.TRANSFORMER
    return nncf.quantize(model, nncf.Dataset(inputs), **options)


def quantize(
    models_dir: Path,
    sources: list[Path],
    slices: int,
    variant: str,
    profile: str,
    patterns: list[str] | None = None,
    preset: str = "performance",
) -> dict:
    import nncf

    model_dir = Path(models_dir) / MODEL_NAME
    manifest = read_manifest(model_dir)
    encoder_xml = model_dir / manifest["encoder"]["xml"]
    started = time.perf_counter()
    images, described = calibration_images(sources, slices)
    inputs = model_inputs(images, int(manifest["input_size"]))
    quantized = quantize_encoder(encoder_xml, inputs, variant, patterns, preset)
    details = {
        "variant": variant,
        "ignored_patterns": list(patterns or []),
        "preset": preset,
        "calibration": {"source": described, "slices": len(inputs), "interpolation": "linear"},
        "nncf": nncf.__version__,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return store_profile(model_dir, profile, quantized, details)


def store_profile(model_dir: Path, profile: str, quantized, details: dict) -> dict:
    """Write a quantized encoder (an ov.Model) as encoder_<profile>.xml/.bin beside the f32 IR (atomic renames)
    and record it in the manifest's "profiles" with its sha256, the f32 encoder it came from and `details`."""
    import openvino as ov

    model_dir = Path(model_dir)
    stem = f"encoder_{profile}"
    staging = Path(tempfile.mkdtemp(prefix=f".{stem}-", dir=model_dir))
    try:
        ov.save_model(quantized, staging / f"{stem}.xml", compress_to_fp16=False)
        for suffix in (".xml", ".bin"):
            os.chmod(staging / f"{stem}{suffix}", 0o644)
            os.replace(staging / f"{stem}{suffix}", model_dir / f"{stem}{suffix}")
    finally:
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()
    entry = {
        "encoder": {
            "xml": f"{stem}.xml",
            "bin": f"{stem}.bin",
            "xml_sha256": file_sha256(model_dir / f"{stem}.xml"),
            "bin_sha256": file_sha256(model_dir / f"{stem}.bin"),
        },
        "decoder": "f32",
        "kind": "int8",
        **details,
        "from_encoder_bin_sha256": read_manifest(model_dir)["encoder"]["bin_sha256"],
        "openvino": ov.__version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    manifest = read_manifest(model_dir)  # re-read: another profile may have been added meanwhile
    manifest.setdefault("profiles", {})[profile] = entry
    write_manifest(model_dir, manifest)
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.quantize", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument(
        "--calibration",
        type=Path,
        action="append",
        default=[],
        help="challenge-format npz file or folder (repeatable); default: the project's phantoms",
    )
    parser.add_argument("--slices", type=int, default=DEFAULT_SLICES, help="calibration slices")
    parser.add_argument("--variant", choices=VARIANTS, default=DEFAULT_VARIANT)
    parser.add_argument(
        "--ignore-pattern",
        action="append",
        default=[],
        help="regex of op names kept in floating point (repeatable), on top of the variant",
    )
    parser.add_argument(
        "--preset",
        choices=("performance", "mixed"),
        default="performance",
        help="NNCF preset: symmetric activations (performance) or asymmetric (mixed)",
    )
    parser.add_argument("--profile", default=PROFILE_PREFIX, help="profile name (must start with 'int8')")
    parser.add_argument("--force", action="store_true", help="re-quantize even if the profile is up to date")
    parser.add_argument("--check", action="store_true", help="exit 0 if the profile is present and up to date")
    args = parser.parse_args(argv)
    if not args.profile.startswith(PROFILE_PREFIX):
        parser.error("--profile must start with 'int8'")
    models_dir = (args.models_dir or default_models_dir()).expanduser()
    model_dir = models_dir / MODEL_NAME
    status = profile_status(model_dir, args.profile)
    if args.check:
        print(f"{args.profile}: {status}")
        return 0 if status == "ok" else 1
    if not (model_dir / "manifest.json").is_file():
        print(f"no f32 export in {model_dir}: run `python -m models.export` first", file=sys.stderr)
        return 1
    if status == "ok" and not args.force:
        print(f"up to date: {args.profile} in {model_dir}")
        return 0
    entry = quantize(
        models_dir, args.calibration, args.slices, args.variant, args.profile, args.ignore_pattern, args.preset
    )
    size = (model_dir / entry["encoder"]["bin"]).stat().st_size / 1e6
    print(
        f"wrote {args.profile} ({entry['variant']}) encoder to {model_dir} in {entry['seconds']} s: "
        f"{entry['encoder']['bin']} {size:.1f} MB, calibrated on {entry['calibration']['slices']} slices "
        f"({entry['calibration']['source']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
