"""Can overlapping encoding and decoding in 3D pay on this machine? (issue 5, "Further speed")

    .venv/bin/python ops/bench/overlap_probe.py [--case 3DBox_CT_tssm] [--slices 12] [--boxes 10] [--repeats 3]

The propagation's encoder calls do not depend on the decoder (the slices are known in advance), so an encoder
could run ahead while the decoder works on the current slice. Whether that is faster depends on the cores: with all
cores busy in each call, overlap only fills idle gaps. This probe times the same work three ways, side by side
(alternating, medians of --repeats), on real slices of a case with the real model:
  sequential-2t   encode slice, decode its boxes, next slice; both models on 2 threads (what the engine does)
  pipeline-1t+1t  an encoder thread (1-thread model) runs ahead into a bounded queue; the decoder (1 thread) follows
  pipeline-2t+2t  the same with 2-thread models (oversubscribes 2 cores)
and reports the 1- vs 2-thread scaling of each model. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

sys.path.insert(0, str(common.REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", default="3DBox_CT_tssm")
    parser.add_argument("--slices", type=int, default=12)
    parser.add_argument("--boxes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from models.paths import default_models_dir
    from models.preprocess import geometry_for, scale_boxes, to_model_input
    from models.registry import load_registry
    from producer.formats.npz import load_npz_study
    from worker.engine.runtime import CompiledSam, RuntimeSettings

    cases = common.case_set()
    path = cases.image(args.case) if cases.image(args.case).is_file() else cases.image(cases.names()[-1])
    study = load_npz_study(path)
    spec = load_registry(default_models_dir())["litemedsam"]
    volume = study.image if study.is_3d else study.image[None]
    zs = np.linspace(0, volume.shape[0] - 1, args.slices).round().astype(int)
    tensors = [to_model_input(np.ascontiguousarray(volume[z]), spec.input_size)[0] for z in zs]
    geo = geometry_for(volume.shape[1:3], spec.input_size)
    raw = study.boxes[:, [0, 1, 3, 4]] if study.is_3d else study.boxes[:, :4]
    boxes = scale_boxes(raw, geo)[np.arange(args.boxes) % len(study.boxes)]
    m2 = CompiledSam(spec, RuntimeSettings("f32", 2))
    m1e, m1d = CompiledSam(spec, RuntimeSettings("f32", 1)), CompiledSam(spec, RuntimeSettings("f32", 1))
    m2e, m2d = CompiledSam(spec, RuntimeSettings("f32", 2)), CompiledSam(spec, RuntimeSettings("f32", 2))
    for m in (m2, m1e, m1d, m2e, m2d):
        m.decode(m.encode(tensors[0]), boxes)

    def sequential() -> float:
        started = time.perf_counter()
        for t in tensors:
            m2.decode(m2.encode(t), boxes)
        return time.perf_counter() - started

    def pipeline(enc, dec) -> float:
        ahead: queue.Queue = queue.Queue(maxsize=2)

        def producer():
            for t in tensors:
                ahead.put(enc.encode(t))

        started = time.perf_counter()
        worker = threading.Thread(target=producer)
        worker.start()
        for _ in tensors:
            dec.decode(ahead.get(), boxes)
        worker.join()
        return time.perf_counter() - started

    embedding = m2.encode(tensors[0])

    def single(model, what) -> float:
        started = time.perf_counter()
        for t in tensors[:4]:
            if what == "enc":
                model.encode(t)
            else:
                model.decode(embedding, boxes)
        return (time.perf_counter() - started) / 4

    results = {"sequential-2t": [], "pipeline-1t+1t": [], "pipeline-2t+2t": []}
    scaling = {"enc-1t": [], "enc-2t": [], "dec-1t": [], "dec-2t": []}
    loads = []
    for _ in range(args.repeats):
        loads.append(common.loadavg())
        results["sequential-2t"].append(sequential())
        results["pipeline-1t+1t"].append(pipeline(m1e, m1d))
        results["pipeline-2t+2t"].append(pipeline(m2e, m2d))
        scaling["enc-1t"].append(single(m1e, "enc"))
        scaling["enc-2t"].append(single(m2, "enc"))
        scaling["dec-1t"].append(single(m1d, "dec"))
        scaling["dec-2t"].append(single(m2, "dec"))
    med = {k: statistics.median(v) for k, v in results.items()}
    sc = {k: statistics.median(v) for k, v in scaling.items()}
    out = {
        "case": path.stem,
        "slices": args.slices,
        "boxes": args.boxes,
        "repeats": args.repeats,
        "median_s": med,
        "runs_s": results,
        "gain_vs_sequential": {k: med["sequential-2t"] / v for k, v in med.items()},
        "per_call_s": sc,
        "thread_scaling": {"encoder": sc["enc-1t"] / sc["enc-2t"], "decoder": sc["dec-1t"] / sc["dec-2t"]},
        "loads": loads,
        "machine": common.machine_info(),
    }
    for k, v in med.items():
        print(f"{k:16s} {v:7.2f} s  ({out['gain_vs_sequential'][k]:.3f}x vs sequential)", file=sys.stderr)
    print(
        f"2-thread scaling: encoder {out['thread_scaling']['encoder']:.2f}x, decoder "
        f"{out['thread_scaling']['decoder']:.2f}x",
        file=sys.stderr,
    )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
