"""The exported LiteMedSAM IR reproduces PyTorch (parity.npz, written at export time) in OpenVINO f32, no torch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from models.export import (
    EMBEDDING_REL_TOL,
    LOGITS_ABS_TOL,
    MASK_AGREEMENT_MIN,
    is_up_to_date,
)
from models.paths import default_models_dir

MODEL_DIR = default_models_dir() / "litemedsam"
needs_model = pytest.mark.skipif(
    not (MODEL_DIR / "manifest.json").is_file(),
    reason=f"LiteMedSAM IR not exported in {MODEL_DIR} (run: python -m models.export in the export venv)",
)


def sha256(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((MODEL_DIR / "manifest.json").read_text())


@pytest.fixture(scope="module")
def parity(manifest):
    with np.load(MODEL_DIR / manifest["parity"]["file"], allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


@pytest.fixture(scope="module")
def compiled(manifest):
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    encoder = core.compile_model(MODEL_DIR / manifest["encoder"]["xml"], "CPU", config)
    decoder = core.compile_model(MODEL_DIR / manifest["decoder"]["xml"], "CPU", config)
    return encoder, decoder


@pytest.fixture(scope="module")
def ov_embeddings(compiled, parity):
    encoder, _ = compiled
    return np.stack([encoder({"image": image[None]})["image_embeddings"][0].copy() for image in parity["images"]])


def decode(decoder, embedding: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    return decoder({"image_embeddings": embedding[None], "boxes": boxes})["low_res_logits"].copy()


@pytest.mark.model
@needs_model
class TestExportedModel:
    def test_manifest_hashes_match_files(self, manifest):
        for part in ("encoder", "decoder"):
            for kind in ("xml", "bin"):
                assert sha256(MODEL_DIR / manifest[part][kind]) == manifest[part][f"{kind}_sha256"], (part, kind)
        assert sha256(MODEL_DIR / "encoder.bin", MODEL_DIR / "decoder.bin") == manifest["sha256"]
        assert is_up_to_date(MODEL_DIR)

    def test_io_names_and_shapes(self, compiled, manifest):
        encoder, decoder = compiled
        assert encoder.input(manifest["encoder"]["input"]).get_partial_shape().to_shape() == [1, 3, 256, 256]
        assert list(encoder.output(manifest["encoder"]["output"]).get_shape()) == manifest["embedding_shape"]
        assert decoder.input("boxes").get_partial_shape().to_string() == "[?,4]"
        assert decoder.output(manifest["decoder"]["output"]).get_partial_shape().to_string() == "[?,1,256,256]"

    def test_encoder_matches_pytorch(self, ov_embeddings, parity):
        reference = parity["embeddings"]
        assert ov_embeddings.shape == reference.shape
        assert np.abs(ov_embeddings - reference).max() <= EMBEDDING_REL_TOL * np.abs(reference).max()

    def test_decoder_matches_pytorch(self, compiled, parity):
        _, decoder = compiled
        for embedding, boxes, reference in zip(parity["embeddings"], parity["boxes"], parity["logits"]):
            assert np.abs(decode(decoder, embedding, boxes) - reference).max() <= LOGITS_ABS_TOL

    def test_end_to_end_masks_agree(self, compiled, ov_embeddings, parity):
        _, decoder = compiled
        logits = np.stack([decode(decoder, emb, boxes) for emb, boxes in zip(ov_embeddings, parity["boxes"])])
        reference = parity["logits"]
        assert np.mean((logits > 0) == (reference > 0)) >= MASK_AGREEMENT_MIN
        assert (reference > 0).any(), "parity references should contain some foreground"

    @pytest.mark.parametrize("batch", [1, 2, 5, 17])
    def test_decoder_dynamic_batch(self, compiled, parity, batch):
        _, decoder = compiled
        boxes, reference = parity["boxes"][1], parity["logits"][1]
        rows = np.arange(batch) % len(boxes)
        logits = decode(decoder, parity["embeddings"][1], boxes[rows])
        assert logits.shape == (batch, 1, 256, 256)
        assert np.abs(logits - reference[rows]).max() <= LOGITS_ABS_TOL


def test_up_to_date_check_notices_tampering(tmp_path):
    files = {
        "encoder.xml": b"<net/>",
        "encoder.bin": b"\x01" * 64,
        "decoder.xml": b"<net/>",
        "decoder.bin": b"\x02" * 32,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "parity.npz").write_bytes(b"npz")

    def part(stem):
        return {
            "xml": f"{stem}.xml",
            "bin": f"{stem}.bin",
            "xml_sha256": sha256(tmp_path / f"{stem}.xml"),
            "bin_sha256": sha256(tmp_path / f"{stem}.bin"),
        }

    manifest = {
        "format": 1,
        "name": "litemedsam",
        "encoder": part("encoder"),
        "decoder": part("decoder"),
        "sha256": sha256(tmp_path / "encoder.bin", tmp_path / "decoder.bin"),
        "parity": {"file": "parity.npz"},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert is_up_to_date(tmp_path)

    (tmp_path / "decoder.bin").write_bytes(b"\x02" * 31 + b"\x03")
    assert not is_up_to_date(tmp_path)
    (tmp_path / "decoder.bin").write_bytes(files["decoder.bin"])
    assert is_up_to_date(tmp_path)

    (tmp_path / "encoder.xml").unlink()
    assert not is_up_to_date(tmp_path)
    (tmp_path / "encoder.xml").write_bytes(files["encoder.xml"])
    (tmp_path / "manifest.json").write_text("{not json")
    assert not is_up_to_date(tmp_path)
