"""Accuracy-controlled INT8 (issue 26): the quantizer's pieces on a tiny TinyViT-shaped IR, and the whole search
(worker.int8_search) on the box-echo pair making a profile that `worker calibrate` then gates.

Real NNCF runs on tiny models: seconds. The search on the real LiteMedSAM is a measurement, not a test
(ops/bench/RESULTS.md, "Accuracy-controlled INT8 (issue 26)").
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nncf", reason="nncf not installed (pip install -e .[quantize])")

import openvino as ov  # noqa: E402
import openvino.opset13 as ops  # noqa: E402

from models.quantize_accuracy import (  # noqa: E402
    ControlSettings,
    compile_f32,
    compressed,
    embedding_error,
    embeddings,
    float_ops,
    keep_quantized_only,
    op_groups,
    search_under_control,
    sensitivity,
)

SIZE = 32


def _conv(x, cin: int, cout: int, rng, name: str, kernel: int = 1):
    weights = ops.constant(rng.normal(0, 1 / np.sqrt(cin * kernel * kernel), (cout, cin, kernel, kernel)).astype("f4"))
    pad = kernel // 2
    out = ops.convolution(x, weights, [1, 1], [pad, pad], [pad, pad], [1, 1])
    out.set_friendly_name(name)
    bias = ops.constant(rng.normal(0, 0.1, (1, cout, 1, 1)).astype("f4"))  # what bias correction shifts
    return ops.relu(ops.add(out, bias))


def _linear(x, cin: int, cout: int, rng, name: str):
    weights = ops.constant(rng.normal(0, 1 / np.sqrt(cin), (cout, cin)).astype("f4"))
    out = ops.matmul(x, weights, False, True)
    out.set_friendly_name(f"__module.{name}/aten::linear/MatMul")
    return out


def tinyvit_like(seed: int = 0) -> ov.Model:
    """Named like the exported TinyViT: two stem convolutions, a convolutional stage, its downsampling, one
    transformer stage (attention with softmax and LayerNorm, MLP) and a neck."""
    rng = np.random.default_rng(seed)
    image = ops.parameter([1, 3, SIZE, SIZE], np.float32, name="image")
    x = _conv(image, 3, 8, rng, "Multiply_1", 3)
    x = _conv(x, 8, 8, rng, "Multiply_2", 3)
    for k in range(6):
        x = _conv(x, 8, 8, rng, f"Multiply_{3 + k}")
    for k in range(3):
        x = _conv(x, 8, 8, rng, f"Multiply_{9 + k}")
    tokens = ops.transpose(ops.reshape(x, [1, 8, SIZE * SIZE], False), [0, 2, 1])  # (1, N, C)
    normed = ops.mvn(tokens, [2], True, 1e-5, "inside_sqrt")
    qkv = _linear(normed, 8, 24, rng, "layers.1.blocks.0.attn.qkv")
    q, k, v = ops.split(qkv, 2, 3).outputs()
    attention = ops.softmax(ops.matmul(q, k, False, True), 2)
    tokens = ops.add(tokens, _linear(ops.matmul(attention, v, False, False), 8, 8, rng, "layers.1.blocks.0.attn.proj"))
    hidden = ops.relu(_linear(ops.mvn(tokens, [2], True, 1e-5, "inside_sqrt"), 8, 16, rng, "layers.1.blocks.0.mlp.fc1"))
    tokens = ops.add(tokens, _linear(hidden, 16, 8, rng, "layers.1.blocks.0.mlp.fc2"))
    x = ops.reshape(ops.transpose(tokens, [0, 2, 1]), [1, 8, SIZE, SIZE], False)
    weights = ops.constant(rng.normal(0, 0.3, (16, 8, 1, 1)).astype("f4"))
    neck = ops.convolution(x, weights, [1, 1], [0, 0], [0, 0], [1, 1])
    neck.set_friendly_name("__module.neck.0/aten::_convolution/Convolution")
    neck.output(0).get_tensor().set_names({"image_embeddings"})
    return ov.Model([neck], [image], "tinyvit_like")


def _inputs(count: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((1, 3, SIZE, SIZE), dtype=np.float32) for _ in range(count)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tinyvit")
    ov.save_model(tinyvit_like(), folder / "encoder.xml", compress_to_fp16=False)
    return folder / "encoder.xml"


def test_op_groups_name_the_encoders_parts(tiny):
    groups = op_groups(ov.Core().read_model(str(tiny)))
    assert list(groups) == [
        "patch_embed",
        "layers.0.mbconv",
        "layers.0.downsample",
        "layers.1.attn",
        "layers.1.mlp",
        "neck",
    ]
    assert [len(groups[g]) for g in groups] == [2, 6, 3, 4, 2, 1]


class OutputValidation:
    """The shape worker.int8_search's DSC validation has, with a metric from the output itself: 1 - NMSE."""

    def __init__(self, reference_model: ov.Model):
        self.items = _inputs(4, seed=2)
        self.reference = embeddings(compile_f32(reference_model), self.items)

    def __call__(self, model):
        error = embedding_error(self.reference, embeddings(compile_f32(model), self.items))
        return 1.0 - error["nmse"], error


def _search(tiny: Path, max_drop: float, **extra):
    validate = OutputValidation(ov.Core().read_model(str(tiny)))
    settings = ControlSettings(max_drop=max_drop, subset_size=8, max_steps=3, **extra)
    return search_under_control(tiny, _inputs(8), _inputs(3, seed=3), validate, settings)


@pytest.fixture(scope="module")
def loose(tiny):
    """The search with any drop allowed: every group quantized, nothing put back (shared by the tests below)."""
    return _search(tiny, max_drop=1.0)


def test_search_puts_groups_back_to_float_only_when_the_metric_asks(tiny, loose):
    assert loose.reached and loose.kept_groups == [] and len(loose.steps) == 1
    assert loose.kept_float == float_ops(loose.fully_quantized)  # nothing put back
    strict = _search(tiny, max_drop=0.0)  # no drop allowed: it tries max_steps groups, most sensitive first
    ranked = [row["group"] for row in strict.sensitivity[:-1]]
    assert [step["float_groups"] for step in strict.steps] == [ranked[:k] for k in range(4)]
    assert not strict.reached and strict.kept_groups == ranked[: len(strict.kept_groups)]
    best = max(step["metric"] for step in strict.steps)
    assert best == next(s["metric"] for s in strict.steps if s["float_groups"] == strict.kept_groups)
    assert set(strict.kept_float) > set(loose.kept_float)
    assert (
        embedding_error(*_outputs(tiny, strict.model))["nmse"] < embedding_error(*_outputs(tiny, loose.model))["nmse"]
    )


def _outputs(tiny: Path, model) -> tuple[list[np.ndarray], list[np.ndarray]]:
    items = _inputs(3, seed=5)
    return embeddings(compile_f32(ov.Core().read_model(str(tiny))), items), embeddings(compile_f32(model), items)


def test_keep_float_groups_are_never_quantized(tiny):
    result = _search(tiny, max_drop=1.0, keep_float=("patch_embed", "neck"))
    groups = op_groups(ov.Core().read_model(str(tiny)))
    assert set(groups["patch_embed"] + groups["neck"]) <= set(result.kept_float)
    assert result.kept_groups == ["patch_embed", "neck"]
    with pytest.raises(ValueError, match="unknown op group"):
        _search(tiny, max_drop=1.0, keep_float=("attention",))


def test_sensitivity_quantizes_one_group_at_a_time(tiny, loose):
    fully = loose.fully_quantized
    f32 = ov.Core().read_model(str(tiny))
    inputs = _inputs(3, seed=7)
    reference = embeddings(compile_f32(f32), inputs)
    none = embedding_error(reference, embeddings(compile_f32(keep_quantized_only(fully, set(), f32)), inputs))
    biased = embedding_error(reference, embeddings(compile_f32(keep_quantized_only(fully, set())), inputs))
    rows = sensitivity(f32, fully, inputs)
    assert [row["group"] for row in rows][-1] == "all groups"
    assert {row["group"] for row in rows[:-1]} == set(op_groups(f32))
    assert [row["nmse"] for row in rows[:-1]] == sorted((row["nmse"] for row in rows[:-1]), reverse=True)
    assert all(row["nmse"] >= 0 and row["min_cosine"] <= 1 + 1e-6 for row in rows)
    # nothing quantized, with the original biases back, is the f32 encoder (SmoothQuant's scales cancel in float);
    # keeping the biases NNCF's bias correction shifted is not
    assert none["nmse"] < 1e-8 < biased["nmse"]
    assert all(row["nmse"] > none["nmse"] for row in rows)


def test_compressed_weights_are_int8_and_compute_the_same(loose):
    fully = loose.fully_quantized
    small = compressed(fully)
    weights = [op for op in small.get_ordered_ops() if op.get_type_name() == "Constant"]
    assert any(op.get_element_type().get_type_name() == "i8" for op in weights)
    assert not float_ops(small) or set(float_ops(small)) == set(float_ops(fully))
    inputs = _inputs(2, seed=9)
    same = embedding_error(embeddings(compile_f32(fully), inputs), embeddings(compile_f32(small), inputs))
    assert same["nmse"] < 1e-6


# ---------------------------------------------------------------- the whole command, and calibrate's gate


@pytest.fixture(scope="module")
def searched(echo_models_dir, tmp_path_factory):
    """worker.int8_search on the box-echo registry and cases derived from the phantoms."""
    from producer.phantoms import write_phantoms
    from worker.int8_search import search

    root = tmp_path_factory.mktemp("echo-search")
    models_dir = root / "models"
    shutil.copytree(echo_models_dir, models_dir)
    write_phantoms(root / "cases")
    settings = ControlSettings(subset_size=8, max_steps=2)
    entry, report = search(models_dir, root / "cases", "int8-ac", settings, 4, 1, 2, validation_3d=1)
    return models_dir, root / "cases", entry, report


def test_search_stores_a_profile_with_what_it_was_tuned_on(searched):
    models_dir, cases, entry, report = searched
    manifest = json.loads((models_dir / "litemedsam" / "manifest.json").read_text())
    assert manifest["profiles"]["int8-ac"] == entry
    tuned = entry["tuned_on"]
    assert tuned["folder"] == str(cases.resolve()) and len(tuned["held_out"]) == 4
    assert tuned["cases"] and not set(tuned["cases"]) & set(tuned["held_out"])  # chosen on other cases
    assert set(report["validation_f32"]) == set(tuned["cases"])
    assert all(0 < dsc <= 1 for dsc in report["validation_f32"].values())
    # the echo decoder ignores the embedding: no case moves, the first step is within the drop
    assert report["reached"] and len(report["steps"]) == 1 and report["float_groups"] == []
    assert set(report["steps"][0]["details"]) == set(tuned["cases"])
    assert all(delta == 0.0 for delta in report["steps"][0]["details"].values())
    assert entry["calibration"]["slices"] > 0 and entry["control"]["preset"] == "mixed"
    assert report["sensitivity"] and report["sensitivity"][-1]["group"] == "all groups"
    calibrated = set(tuned["calibration_slices"])  # real slices of volumes, none inside a held-out case
    assert calibrated and all(name.startswith(("3DBox_", "2DBox_")) for name in calibrated)


def test_calibrate_gates_the_profile_on_held_out_cases_and_refuses_the_others(searched):
    from producer.derived import derive_cases
    from worker.calibrate import calibrate, evaluation_cases

    models_dir, cases, entry, _ = searched
    source = str(cases.resolve())
    held_out = evaluation_cases(cases, max_cases=4)
    verdict = calibrate(models_dir, held_out[:2], ["int8-ac"], threads=1, evaluation_source=source)
    gated = verdict["profiles"]["int8-ac"]
    assert gated["passed"] and not gated["tuned_on_evaluation_data"] and not gated["equivalent_to_f32"]
    assert set(gated["cases"]) == {case.name for case in held_out[:2]}
    tuned = [case for case in derive_cases(cases) if case.name in entry["tuned_on"]["cases"]][:1]
    refused = calibrate(models_dir, held_out[:1] + tuned, ["int8-ac"], threads=1, evaluation_source=source)
    assert not refused["profiles"]["int8-ac"]["passed"]
    assert refused["profiles"]["int8-ac"]["tuned_on_evaluation_data"] == ["int8-ac"]


def test_tuned_slices_hold_calibration_and_validation_and_later_cases_avoid_them(searched):
    from producer.derived import derive_cases
    from worker.evaluation.derived import cases_outside
    from worker.int8_search import _source_slices, tuned_slices

    _, cases, entry, _ = searched
    tuned = entry["tuned_on"]
    avoid = tuned_slices(cases, tuned)
    for stem, picks in tuned["calibration_slices"].items():
        assert set(picks) <= avoid[stem]
    volumes = {}
    for path in sorted((cases / "imgs").glob("3DBox_*.npz")):
        with np.load(path, allow_pickle=False) as npz:
            volumes[path.stem] = npz["imgs"]
    chosen = [case for case in derive_cases(cases) if case.name in tuned["cases"]]
    seen = 0
    for case in chosen:
        stem = "3DBox_" + case.name.split("_", 1)[1].split("-")[0]
        if stem in volumes:
            held = _source_slices(case, volumes[stem])
            assert held and held <= avoid[stem], case.name
            seen += 1
    assert seen, "no validation case came from a volume"
    later = cases_outside(cases, avoid, per_kind=3, depth=8)
    assert later
    for case in later:
        stem = "3DBox_" + case.name.split("_", 1)[1].split("-")[0]
        assert not _source_slices(case, volumes[stem]) & avoid.get(stem, set()), case.name
