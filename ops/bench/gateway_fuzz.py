#!/usr/bin/env python3
"""The gateway's API fuzzed longer than the tests do: schemathesis (CLI, every check, every phase) against the
service's own OpenAPI document, with an admin's credential, a submitter's (read + submit, not admin) and none,
each with fresh random seeds and many examples per operation. The service is the real app (routes, audit, limits,
DICOMweb client) with the tests' box-filling segmenter and one allowed DICOMweb root where nothing listens.

Prints a table (who, seed, test cases, failures, seconds); exits non-zero if any run found a failure. With
--record, appends a dated block to the "Gateway API fuzzing (issue 24)" section of ops/bench/RESULTS.md.

    .venv/bin/python ops/bench/gateway_fuzz.py --examples 200 --seeds 2 --record
"""

from __future__ import annotations

import argparse
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import append_to_section, machine_info, machine_lines, md_table  # noqa: E402

from gateway_support import ADMIN, ALICE, ServedApp, bearer, fuzz_app  # noqa: E402

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
WHO = {"admin": bearer(ADMIN), "submitter": bearer(ALICE), "no credential": {}}


def run(url: str, headers: dict[str, str], examples: int, seed: int, folder: Path) -> dict:
    config = Path(__file__).resolve().parents[2] / "tests" / "schemathesis.toml"
    command = [str(SCHEMATHESIS), "--config-file", str(config), "run", f"{url}/openapi.json", "--checks", "all"]
    command += ["--workers", "1"]
    command += ["--max-examples", str(examples), "--seed", str(seed), "--no-shrink"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=folder)
    seconds = time.perf_counter() - started
    generated = re.search(r"(\d+) generated", result.stdout)
    failures = re.search(r"(\d+) found (\d+) unique failure", result.stdout)
    return {
        "cases": int(generated.group(1)) if generated else 0,
        "failures": int(failures.group(2)) if failures else 0,
        "ok": result.returncode == 0,
        "seconds": seconds,
        "tail": result.stdout[-4000:],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=200, help="examples per operation and phase")
    parser.add_argument("--seeds", type=int, default=2, help="random seeds per identity")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    info = machine_info()
    rows, failed = [], []
    with tempfile.TemporaryDirectory(prefix="gateway-fuzz-") as scratch, ServedApp(fuzz_app(Path(scratch))) as app:
        for who, headers in WHO.items():
            for _ in range(args.seeds):
                seed = random.randrange(2**31)
                outcome = run(app.url, headers, args.examples, seed, Path(scratch))
                rows.append([who, seed, outcome["cases"], outcome["failures"], f"{outcome['seconds']:.0f}"])
                if not outcome["ok"]:
                    failed.append((who, seed, outcome["tail"]))
    info["uptime_end"] = machine_info()["uptime"]
    table = md_table(["credential", "seed", "test cases", "failures", "seconds"], rows)
    print(table)
    for who, seed, tail in failed:
        print(f"\n--- {who}, seed {seed} ---\n{tail}")
    if args.record:
        block = "\n".join(
            [
                f"### {info['date']}",
                f"Command: `ops/bench/gateway_fuzz.py --examples {args.examples} --seeds {args.seeds} --record`; "
                "schemathesis `--checks all`, every phase, one worker.",
                *machine_lines(info),
                "",
                table,
            ]
        )
        append_to_section("Gateway API fuzzing (issue 24)", block)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
