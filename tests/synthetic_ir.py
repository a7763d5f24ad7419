"""A tiny SAM-shaped OpenVINO IR pair whose decoder echoes the box prompt, for testing geometry and strategies.

Encoder: (1, 3, S, S) -> (1, 256, 64, 64) (average pooling + a 1x1 convolution).
Decoder: (embedding, boxes (B, 4) in model-input pixels) -> logits (B, 1, L, L) that are positive exactly
inside the box (max corner inclusive), so a correct pre/post-processing gives back the prompt box at the original
resolution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops


def _encoder(size: int) -> ov.Model:
    image = ops.parameter([1, 3, size, size], np.float32, name="image")
    pooled = ops.avg_pool(image, [size // 64] * 2, [0, 0], [0, 0], [size // 64] * 2, exclude_pad=True)
    weights = ops.constant(np.linspace(0.5, 1.5, 256 * 3, dtype=np.float32).reshape(256, 3, 1, 1))
    out = ops.convolution(pooled, weights, [1, 1], [0, 0], [0, 0], [1, 1])
    out.output(0).get_tensor().set_names({"image_embeddings"})
    return ov.Model([out], [image], "echo_encoder")


def _decoder(size: int, logits: int) -> ov.Model:
    embedding = ops.parameter([1, 256, 64, 64], np.float32, name="image_embeddings")
    boxes = ops.parameter([-1, 4], np.float32, name="boxes")
    centres = (np.arange(logits, dtype=np.float32) + 0.5) * (size / logits)
    xs = ops.constant(centres.reshape(1, 1, 1, logits))
    ys = ops.constant(centres.reshape(1, 1, logits, 1))
    x0, y0, x1, y1 = (ops.reshape(part, [-1, 1, 1, 1], False) for part in ops.split(boxes, 1, 4).outputs())
    one = ops.constant(np.float32(1))  # x_max / y_max are inclusive pixel indices
    inside_x = ops.minimum(ops.subtract(xs, x0), ops.subtract(ops.add(x1, one), xs))
    inside_y = ops.minimum(ops.subtract(ys, y0), ops.subtract(ops.add(y1, one), ys))
    uses_embedding = ops.multiply(ops.reduce_mean(embedding, [0, 1, 2, 3], False), ops.constant(np.float32(0)))
    out = ops.add(ops.minimum(inside_x, inside_y), uses_embedding)
    out.output(0).get_tensor().set_names({"low_res_logits"})
    return ov.Model([out], [embedding, boxes], "echo_decoder")


def build_echo_pair(folder: Path, size: int = 256, logits: int = 256) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    encoder, decoder = folder / "echo_encoder.xml", folder / "echo_decoder.xml"
    ov.save_model(_encoder(size), encoder, compress_to_fp16=False)
    ov.save_model(_decoder(size, logits), decoder, compress_to_fp16=False)
    return encoder, decoder
