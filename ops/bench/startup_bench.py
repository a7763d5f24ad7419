"""Start-up (issue 5): model load cold (empty OpenVINO compiled cache) and warm (from the cache), per profile.

    .venv/bin/python ops/bench/startup_bench.py [--profiles f32,bf16,int8] [--repeats 3] [--no-write]

Each measurement is a fresh process (`--child`): import the engine, Engine(...) + compile the encoder and decoder
(`load_s`), then the first encoder call and a second one (the first inference of a compiled model allocates and
JIT-compiles kernels, so it is slower; a worker pays it once). Cold: a models dir whose files are symlinks to the
real IR, with its own empty compiled-cache dir; warm: the same dir again, once the cache is filled.
Target: load from the compiled cache < 1 s.
"""

from __future__ import annotations

import time

T_START = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

sys.path.insert(0, str(common.REPO))


def child(models_dir: Path, precision: str) -> dict:
    import numpy as np

    imported = time.time()
    from worker.engine.engine import Engine, EngineSettings

    engine_imported = time.time()
    started = time.perf_counter()
    engine = Engine(EngineSettings(models_dir=models_dir, precision=precision))
    model = engine.model("litemedsam")
    load_s = time.perf_counter() - started
    x = np.random.default_rng(0).random((1, 3, 256, 256), dtype=np.float32)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        model.encode(x)
        times.append(time.perf_counter() - started)
    return {
        "precision": precision,
        "load_s": load_s,
        "import_s": engine_imported - T_START,
        "python_import_s": imported - T_START,
        "first_encode_s": times[0],
        "steady_encode_s": min(times[1:]),
        "t_end": time.time(),
    }


def symlinked_models(real: Path, target: Path) -> Path:
    (target / "litemedsam").mkdir(parents=True)
    for item in (real / "litemedsam").iterdir():
        if item.is_file():
            (target / "litemedsam" / item.name).symlink_to(item)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", default="f32,bf16,int8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("MODELS_DIR", "PRECISION"))
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(Path(args.child[0]), args.child[1])))
        return 0

    from models.paths import default_models_dir

    real = default_models_dir()
    results: dict[str, dict[str, list[dict]]] = {}
    info = common.machine_info()
    for profile in args.profiles.split(","):
        results[profile] = {"cold": [], "warm": []}
        for _ in range(args.repeats):
            scratch = Path(tempfile.mkdtemp(prefix="startup-"))
            try:
                models = symlinked_models(real, scratch / "models")
                cmd = [str(common.RUNTIME_PY), __file__, "--child", str(models), profile]
                results[profile]["cold"].append(common.run_child(cmd))
                results[profile]["warm"].append(common.run_child(cmd))
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        cold, warm = results[profile]["cold"], results[profile]["warm"]
        print(
            f"{profile}: load cold {statistics.median(r['load_s'] for r in cold):.2f} s, warm "
            f"{statistics.median(r['load_s'] for r in warm):.2f} s; first encode "
            f"{statistics.median(r['first_encode_s'] for r in warm):.2f} s vs steady "
            f"{statistics.median(r['steady_encode_s'] for r in warm):.2f} s"
        )
    data = {"machine": info, "results": results, "repeats": args.repeats}
    data["machine"]["uptime_end"] = common.uptime_line()
    out = common.BENCH / "results" / "startup.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))
    if not args.no_write:
        common.replace_section("Start-up (issue 5)", section(data))
    return 0


def section(data: dict) -> str:
    rows = []
    for profile, r in data["results"].items():
        med = {
            k: {
                f: statistics.median(x[f] for x in v)
                for f in ("load_s", "import_s", "wall_s", "first_encode_s", "steady_encode_s")
            }
            for k, v in r.items()
        }
        rows.append(
            [
                profile,
                f"{med['cold']['load_s']:.2f}",
                f"{med['warm']['load_s']:.2f}",
                "yes" if med["warm"]["load_s"] < 1.0 else "**no**",
                f"{med['warm']['import_s']:.2f}",
                f"{med['warm']['first_encode_s']:.2f}",
                f"{med['warm']['steady_encode_s']:.2f}",
            ]
        )
    return "\n".join(
        [
            f"Command: `ops/bench/startup_bench.py`; medians of {data['repeats']} fresh processes per cell.",
            "",
            *common.machine_lines(data["machine"]),
            "",
            common.md_table(
                [
                    "profile",
                    "model load cold s (empty compiled cache)",
                    "model load warm s (from cache)",
                    "warm < 1 s",
                    "python + engine import s",
                    "first encoder call s",
                    "later encoder call s",
                ],
                rows,
            ),
            "",
            "- Load = `Engine(...)` + compiling encoder and decoder (`CompiledSam`), with OpenVINO's CACHE_DIR "
            "(<models_dir>/.ov-cache/<precision>; int8 also checks its encoder's sha256 against the manifest). "
            "Cold used a fresh models dir (symlinks to the same IR) with an empty cache.",
            "- The first inference of a freshly compiled model is slower than later ones (kernel set-up); a worker "
            "pays it once per process, a one-shot CLI run pays it per study.",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
