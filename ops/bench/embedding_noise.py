"""Control for issue 26's gate: how far the gate's cases move when the f32 embedding gets random noise, no int8.

    .venv/bin/python ops/bench/embedding_noise.py --models-dir DIR --cases DIR [--max-cases 10]
        [--nmse 0.001,0.01] [--seeds 2] [--threads 2] [--json PATH]

Every INT8 profile so far moved some of `worker calibrate`'s held-out cases by more than ±0.5 DSC points, and
which cases failed changed from profile to profile, not with how many layers were int8. The question this
answers: do these cases' masks move that much under any embedding change of that size (the gate then asks for
more than a lossy encoder can give), or only under int8's? The engine runs each case at f32, then with the f32
embedding plus Gaussian noise of a given normalised MSE (noise energy / embedding energy, per slice, the
`models.quantize_accuracy.embedding_error` NMSE the INT8 runs report), seeded per (seed, case). The
cases are `worker.calibrate.evaluation_cases` (the gate's own, `--max-cases` as there), each run with a fresh
embedding cache. Prints per case the f32 DSC and each (NMSE, seed)'s ΔDSC, and per (NMSE, seed) how many cases
are outside ±0.5 points; writes nothing but `--json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import md_table  # noqa: E402


def perturb(embedding: np.ndarray, nmse: float, rng: np.random.Generator) -> np.ndarray:
    """`embedding` plus i.i.d. Gaussian noise whose energy is `nmse` times the embedding's (in expectation)."""
    if nmse < 0:
        raise ValueError(f"nmse must be >= 0, got {nmse}")
    if nmse == 0:
        return embedding.copy()
    sigma = np.sqrt(nmse * float(np.mean(embedding.astype(np.float64) ** 2)))
    return (embedding + rng.normal(0.0, sigma, embedding.shape)).astype(embedding.dtype)


class NoisyEncoder:
    """The engine's f32 model with noise added to every embedding it encodes (the f32 decoder unchanged)."""

    def __init__(self, base, nmse: float, seed: tuple[int, ...]):
        from worker.contract.precision import PartPrecision

        self.spec = base.spec
        self.precision = PartPrecision(f"f32+noise{nmse:g}", base.precision.decoder)
        self.sha256 = f"noise:{nmse:g}:{seed}"
        self._base = base
        self._nmse = nmse
        self._rng = np.random.default_rng(list(seed))

    def encode(self, image: np.ndarray) -> np.ndarray:
        return perturb(self._base.encode(image), self._nmse, self._rng)

    def decode(self, embedding: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        return self._base.decode(embedding, boxes)


def run(models_dir: Path, folder: Path, max_cases: int, levels: list[float], seeds: int, threads: int) -> list[dict]:
    """Per case: name, f32 DSC and {"NMSE/seed": ΔDSC} (DSC with noise minus DSC at f32)."""
    from worker.calibrate import _study, evaluation_cases
    from worker.engine.cache import EmbeddingCache
    from worker.engine.engine import EngineSettings
    from worker.evaluation.metrics import dsc_case
    from worker.int8_search import CandidateEngine

    engine = CandidateEngine(EngineSettings(models_dir=Path(models_dir), threads=threads))
    name = next(iter(engine.registry))

    def dsc(case) -> float:
        engine.cache = EmbeddingCache(engine.settings.cache_bytes)  # every run encodes its slices itself
        return dsc_case(case.gts, engine.segment(_study(case)).labels)

    rows = []
    for index, case in enumerate(evaluation_cases(folder, max_cases=max_cases)):
        reference = dsc(case)
        deltas = {}
        for level in levels:
            for seed in range(seeds):
                engine.candidate = NoisyEncoder(engine.model(name), level, (seed, index))
                try:
                    deltas[f"{level:g}/{seed}"] = dsc(case) - reference
                finally:
                    engine.candidate = None
        rows.append({"case": case.name, "dsc_f32": reference, "delta": deltas})
        print(
            f"{case.name}: f32 {reference:.4f}; " + ", ".join(f"{k} {v * 100:+.2f}" for k, v in deltas.items()),
            file=sys.stderr,
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--cases", type=Path, required=True, help="dev cases with ground truth (imgs/, gts/)")
    parser.add_argument("--max-cases", type=int, default=10, help="as `worker calibrate --max-cases`")
    parser.add_argument("--nmse", default="0.001,0.01", help="comma-separated noise levels (normalised MSE)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        levels = [float(v) for v in args.nmse.split(",") if v]
    except ValueError:
        parser.error(f"--nmse: comma-separated numbers, got {args.nmse!r}")
    if not levels or min(levels) < 0 or args.seeds < 1 or args.max_cases < 1:
        parser.error("need --nmse levels >= 0, --seeds >= 1 and --max-cases >= 1")
    sys.path.insert(0, str(common.REPO))
    from worker.calibration import GATE_DSC

    print(f"uptime at start: {common.uptime_line()}", file=sys.stderr)
    rows = run(args.models_dir, args.cases, args.max_cases, levels, args.seeds, args.threads)
    keys = list(rows[0]["delta"]) if rows else []
    print(
        md_table(
            ["case", "f32 DSC", *[f"ΔDSC pts NMSE {k}" for k in keys]],
            [[r["case"], f"{r['dsc_f32']:.4f}", *[f"{r['delta'][k] * 100:+.2f}" for k in keys]] for r in rows],
        )
    )
    print()
    print(
        md_table(
            ["NMSE/seed", f"outside ±{GATE_DSC * 100:.1f} pts", "worst ΔDSC pts"],
            [
                [
                    k,
                    f"{sum(abs(r['delta'][k]) > GATE_DSC for r in rows)} of {len(rows)}",
                    f"{max((r['delta'][k] for r in rows), key=abs) * 100:+.2f}",
                ]
                for k in keys
            ],
        )
    )
    print(f"\nuptime at end: {common.uptime_line()}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"levels": levels, "seeds": args.seeds, "cases": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
