"""One case through the OpenVINO engine in a fresh process, as the challenge timed it; prints one JSON line.

    .venv/bin/python ops/bench/engine_child.py CASE.npz [--precision f32] [--out DIR] [--latency-repeats N]

Order: import, build the Engine and compile the model (`load_s`, from OpenVINO's compiled cache when warm), read the
npz, segment (`engine_s` = the engine's own total), write `segs` (compressed uint16) if --out, then `t_end`.
The peak RSS is read right after that (ru_maxrss, the process's high-water mark). Every model call inside the run is
timed too (`in_run`), so the time spent outside the model is known exactly.

With --latency-repeats N (after t_end, not part of the wall time) the compiled model is timed alone on real
slices of the case: the encoder N times, the decoder at each batch size the run used max(5, N // b) times, and
model-only limit = encoder calls x median encoder latency + sum over decoder calls of the median latency at that
call's batch size. (The decoder's cost grows with the boxes in a call, so one median for all calls would be wrong.)
"""

from __future__ import annotations

import time

T_START = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class CallLog:
    """Wraps a CompiledSam's encode/decode on the instance (bench-side only) and times every call."""

    def __init__(self, model):
        self.encode_times: list[float] = []
        self.decode: list[tuple[int, float]] = []  # (batch, seconds)
        self.events: list[tuple[str, int]] = []  # ("e", k-th encode) / ("d", batch) in call order, for --replay
        encode, decode = model.encode, model.decode

        def timed_encode(image):
            started = time.perf_counter()
            out = encode(image)
            self.encode_times.append(time.perf_counter() - started)
            self.events.append(("e", len(self.encode_times) - 1))
            return out

        def timed_decode(embedding, boxes):
            started = time.perf_counter()
            out = decode(embedding, boxes)
            self.decode.append((len(boxes), time.perf_counter() - started))
            self.events.append(("d", len(boxes)))
            return out

        model.encode, model.decode = timed_encode, timed_decode
        self._restore = (model, encode, decode)

    def restore(self) -> None:
        model, encode, decode = self._restore
        model.encode, model.decode = encode, decode


def real_slices(study, limit: int):
    """Up to `limit` distinct slices the run needed (3D: spread over the boxes' z-ranges), or the 2D image."""
    import numpy as np

    if not study.is_3d:
        return [study.image]
    boxes = study.boxes.astype(int)
    needed = sorted(set().union(*(range(max(b[2], 0), min(b[5], study.image.shape[0] - 1) + 1) for b in boxes)))
    picks = np.unique(np.linspace(0, len(needed) - 1, min(limit, len(needed))).round().astype(int))
    return [study.image[needed[i]] for i in picks]


def model_latency(model, study, decode_log: list[tuple[int, float]], repeats: int, interpolation: str) -> dict:
    import numpy as np

    from models.preprocess import geometry_for, scale_boxes, to_model_input

    tensors = [
        to_model_input(np.ascontiguousarray(s), model.spec.input_size, interpolation)[0]
        for s in real_slices(study, repeats)
    ]
    model.encode(tensors[0])  # one untimed call: first-inference allocations are not steady state
    encoder = []
    for i in range(repeats):
        started = time.perf_counter()
        embedding = model.encode(tensors[i % len(tensors)])
        encoder.append(time.perf_counter() - started)
    geo = geometry_for(study.image.shape[-2:] if study.is_3d else study.image.shape[:2], model.spec.input_size)
    raw = study.boxes[:, [0, 1, 3, 4]] if study.is_3d else study.boxes[:, :4]
    boxes = scale_boxes(raw, geo)
    decoder: dict[int, list[float]] = {}
    for batch in sorted({b for b, _ in decode_log}):
        rows = boxes[np.arange(batch) % len(boxes)]
        model.decode(embedding, rows)
        decoder[batch] = []
        for _ in range(max(5, repeats // batch)):
            started = time.perf_counter()
            model.decode(embedding, rows)
            decoder[batch].append(time.perf_counter() - started)
    enc_median = statistics.median(encoder)
    dec_median = {b: statistics.median(t) for b, t in decoder.items()}
    return {
        "encoder_median_s": enc_median,
        "encoder_samples": len(encoder),
        "encoder_spread_s": [min(encoder), max(encoder)],
        "decoder_median_s": {str(b): v for b, v in dec_median.items()},
        "decoder_samples": {str(b): len(t) for b, t in decoder.items()},
        "decoder_per_box_median_s": statistics.median([v / b for b, v in dec_median.items()]) if dec_median else None,
        "_dec_median": dec_median,
    }


def replay(model, study, events: list[tuple[str, int]], interpolation: str) -> float:
    """The run's exact sequence of model calls (encode, decode at each batch size), without the engine around it.

    Encoder inputs cycle through real slices of the case; each decode gets the embedding of the latest encode
    (as in the run, where a slice's embedding is used right after it was made). Returns the seconds it took.
    """
    import numpy as np

    from models.preprocess import geometry_for, scale_boxes, to_model_input

    tensors = [
        to_model_input(np.ascontiguousarray(s), model.spec.input_size, interpolation)[0] for s in real_slices(study, 20)
    ]
    geo = geometry_for(study.image.shape[-2:] if study.is_3d else study.image.shape[:2], model.spec.input_size)
    raw = study.boxes[:, [0, 1, 3, 4]] if study.is_3d else study.boxes[:, :4]
    boxes = scale_boxes(raw, geo)
    embedding = model.encode(tensors[0])
    started = time.perf_counter()
    for kind, value in events:
        if kind == "e":
            embedding = model.encode(tensors[value % len(tensors)])
        else:
            model.decode(embedding, boxes[np.arange(value) % len(boxes)])
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case", type=Path)
    parser.add_argument("--precision", default="f32")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--latency-repeats", type=int, default=0)
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument(
        "--replay",
        action="store_true",
        help="after the run, replay its model calls without the engine (model-only, same pattern)",
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        help="extra EngineSettings field=value (int/float/bool/str), e.g. overlap=false",
    )
    args = parser.parse_args(argv)

    from producer.formats.npz import load_npz_study, write_segs
    from worker.calibration import choose_profile
    from worker.engine.engine import Engine, EngineSettings

    imported = time.time()
    kwargs = {"precision": args.precision, "threads": args.threads}
    if args.models_dir:
        kwargs["models_dir"] = args.models_dir
    for item in args.setting:
        key, value = item.split("=", 1)
        kwargs[key] = {"true": True, "false": False}.get(value.lower(), value)
        for cast in (int, float):
            try:
                kwargs[key] = cast(value)
                break
            except ValueError:
                continue
    started = time.perf_counter()
    engine = Engine(EngineSettings(**kwargs), choose_profile)
    study = load_npz_study(args.case)
    route = engine.routing.route(study.modality)
    name = route.pick_model(engine.registry)
    model = engine.model(name, engine.precision.profile.parts(route.strategy(study.is_3d)))  # what segment runs
    load_s = time.perf_counter() - started
    log = CallLog(model)
    result = engine.segment(study)
    log.restore()
    if args.out is not None:
        write_segs(args.out / args.case.name, result.labels)
    t_end = time.time()
    peak = peak_rss_mb()

    metrics = result.metrics.to_dict()
    in_run_model = sum(log.encode_times) + sum(t for _, t in log.decode)
    out = {
        "case": args.case.stem,
        "framework": "openvino",
        "precision": args.precision,
        "profile": metrics["provenance"]["precision"],  # what ran (`fast` resolved)
        "precision_choice": metrics["provenance"].get("precision_choice", ""),
        "settings": {k: v for k, v in kwargs.items() if k != "models_dir"},
        "model": name,
        "engine_s": metrics["times"]["total"],
        "times": metrics["times"],
        "counts": metrics["counts"],
        "strategy": metrics["provenance"]["strategy"],
        "load_s": load_s,
        "import_s": imported - T_START,
        "peak_rss_mb": peak,
        "t_start": T_START,
        "t_end": t_end,
        "in_run": {
            "encoder_calls": len(log.encode_times),
            "decoder_calls": len(log.decode),
            "decoder_batches": dict(sorted(Counter(b for b, _ in log.decode).items())),
            "encoder_s": sum(log.encode_times),
            "decoder_s": sum(t for _, t in log.decode),
            "encoder_median_s": statistics.median(log.encode_times) if log.encode_times else None,
            "model_s": in_run_model,
            "outside_model_s": metrics["times"]["total"] - in_run_model,
        },
    }
    if args.latency_repeats > 0:
        route = engine.routing.route(study.modality)
        latency = model_latency(model, study, log.decode, args.latency_repeats, route.interpolation(study.is_3d))
        dec_median = latency.pop("_dec_median")
        limit = len(log.encode_times) * latency["encoder_median_s"] + sum(dec_median[b] for b, _ in log.decode)
        out["latency"] = latency
        out["limit_s"] = limit
        out["limit_ratio"] = out["engine_s"] / limit if limit else None
    if args.replay:
        route = engine.routing.route(study.modality)
        out["replay_s"] = replay(model, study, log.events, route.interpolation(study.is_3d))
        out["engine_over_replay"] = out["engine_s"] / out["replay_s"]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
