#!/usr/bin/env python3
"""What a person waits for in an interactive session, through HTTP (issue 23, part 6).

`producer serve` (embedded, --threads T) on a loopback port; each case is uploaded as an npz and prompted as the
CVPR 2025 protocol does: the class's box, then clicks at the centre of the largest error against the ground truth
(producer.interactive.error_centre), each one POSTed and timed by the client (wall time of the request):
- 2D (2DBox_CT_amos000475, 512x512): the first box (encode + decode) and every click after it;
- 3D (3DBox_CT_tsup, 90 slices of 512x512): the first box (encodes the box's slices, propagates) and every click
  (one slice's re-decode and the re-propagation while masks change).
Targets: a 2D click <= 0.3 s p95; the first 2D box <= 1.5 s; a 3D click that re-propagates <= 5 s p95.
Without ../shared/data/cases it runs the project's phantoms (say so when quoting). Prints a table; with --record,
writes the "Interactive sessions: latency" section of ops/bench/RESULTS.md.

    .venv/bin/python ops/bench/session_latency.py --threads 2 --clicks 5 --record
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import loadavg, machine_info, machine_lines, md_table, replace_section, uptime_line  # noqa: E402

from orthanc_support import GatewayProcess  # noqa: E402
from producer.interactive import error_centre  # noqa: E402
from producer.sessions import unrle  # noqa: E402

TOKEN = "session-bench-token-0123456789abcdef"
CASES = Path(__file__).resolve().parents[3] / "shared" / "data" / "cases"
CHOSEN = {"2D": "2DBox_CT_amos000475", "3D": "3DBox_CT_tsup"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))] if ordered else float("nan")


def load_case(
    kind: str, name: str | None = None, cases: Path = CASES
) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(name, imgs, gts, first box, spacing) of the named (default: the chosen) case in `cases`, else of the
    phantom of that kind."""
    name = name or CHOSEN[kind]
    if (cases / "imgs" / f"{name}.npz").is_file():
        with np.load(cases / "imgs" / f"{name}.npz") as data, np.load(cases / "gts" / f"{name}.npz") as truth:
            spacing = data["spacing"] if "spacing" in data.files else None
            return name, data["imgs"], truth["gts"], data["boxes"][0], spacing
    from models.phantoms import build_phantoms

    phantom = next(p for p in build_phantoms() if p.name.startswith(f"{kind}Box_CT"))
    return phantom.name + " (phantom)", phantom.imgs, phantom.gts, phantom.boxes[0], phantom.spacing


def run_case(service: GatewayProcess, kind: str, clicks: int, case: str | None = None, cases: Path = CASES) -> dict:
    name, imgs, gts, box, spacing = load_case(kind, case, cases)
    buffer = io.BytesIO()
    arrays = {"imgs": imgs} if spacing is None else {"imgs": imgs, "spacing": spacing}
    np.savez(buffer, **arrays)
    started = time.perf_counter()
    opened = requests.post(
        f"{service.url}/v1/sessions",
        files={"files": ("case.npz", buffer.getvalue())},
        data={"modality": "CT"},
        headers=service.headers,
        timeout=600,
    )
    opened.raise_for_status()
    open_seconds = time.perf_counter() - started
    sid = opened.json()["id"]
    volume = imgs.ndim == 3 and imgs.shape[-1] != 3
    shape = imgs.shape if volume else (1, *imgs.shape[:2])
    truth = (gts == 1).reshape(shape)
    mask = np.zeros(shape, bool)

    def post(body: dict) -> tuple[float, dict]:
        began = time.perf_counter()
        answer = requests.post(
            f"{service.url}/v1/sessions/{sid}/interactions", json=body, headers=service.headers, timeout=600
        )
        answer.raise_for_status()
        return time.perf_counter() - began, answer.json()

    box_seconds, answer = post({"label": "target", "box": [int(v) for v in box]})
    for z, runs in answer["masks"].items():
        mask[int(z)] = unrle(runs, shape[1:])
    click_seconds, changed, workers = [], [], set()
    for _ in range(clicks):
        click = error_centre(truth, mask)
        if click is None:
            break
        z, y, x = click.zyx
        point = [x, y, z] if volume else [x, y]
        seconds, answer = post({"label": "target", "click": {"point": point, "positive": click.positive}})
        click_seconds.append(seconds)
        changed.append(len(answer["changed"]))
        workers.add(answer.get("worker", ""))
        for zz, runs in answer["masks"].items():
            mask[int(zz)] = unrle(runs, shape[1:])
    requests.delete(f"{service.url}/v1/sessions/{sid}", headers=service.headers, timeout=60)
    return {
        "kind": kind,
        "case": name,
        "shape": "x".join(str(s) for s in imgs.shape[: 3 if volume else 2]),
        "open": open_seconds,
        "box": box_seconds,
        "clicks": click_seconds,
        "changed": changed,
        "workers": sorted(workers),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--kinds", default="2D,3D")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    loads = [loadavg()]
    folder = Path(__import__("tempfile").mkdtemp(prefix="session-bench-"))
    service = GatewayProcess(folder, TOKEN, {}, "--threads", str(args.threads))
    try:
        service.wait_ready()
        results = [run_case(service, kind, args.clicks) for kind in args.kinds.split(",")]
    finally:
        service.stop()
    loads.append(loadavg())
    rows = []
    for r in results:
        clicks = r["clicks"]
        rows.append(
            [
                r["kind"],
                r["case"],
                r["shape"],
                f"{r['open']:.2f}",
                f"{r['box']:.2f}",
                str(len(clicks)),
                f"{statistics.median(clicks):.3f}" if clicks else "-",
                f"{percentile(clicks, 0.95):.3f}" if clicks else "-",
                f"{max(clicks):.3f}" if clicks else "-",
                " ".join(str(c) for c in r["changed"]),
            ]
        )
    header = [
        "",
        "case",
        "shape",
        "open s",
        "first box s",
        "clicks",
        "click median s",
        "click p95 s",
        "max s",
        "slices changed per click",
    ]
    table = md_table(header, rows)
    lines = [
        f"`ops/bench/session_latency.py --threads {args.threads} --clicks {args.clicks}`, through HTTP to `producer "
        "serve` (embedded) on loopback; times are the client's wall time per request.",
        "",
        *machine_lines(machine_info(), loads),
        "",
        table,
    ]
    print("\n".join(lines))
    print(uptime_line())
    if args.record:
        replace_section("Interactive sessions: latency (issue 23)", "\n".join(lines))


if __name__ == "__main__":
    main()
