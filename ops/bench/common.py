"""Shared helpers of the benchmark scripts: machine facts, case discovery, child processes, RESULTS.md sections.

Only the stdlib and numpy at import time: the scripts start child processes and must stay light themselves.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "ops" / "bench"
RESULTS_MD = BENCH / "RESULTS.md"
SHARED_CASES = REPO.parent / "shared" / "data" / "cases"
RUNTIME_PY = REPO / ".venv" / "bin" / "python"
EXPORT_VENV = Path(
    os.environ.get("LITEMEDSAM_EXPORT_VENV")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "litemedsam-fleet" / "export-venv"
)
EXPORT_PY = EXPORT_VENV / "bin" / "python"


# ---------------------------------------------------------------- machine and load


def loadavg() -> tuple[float, float, float]:
    return os.getloadavg()


def uptime_line() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: {:.2f}, {:.2f}, {:.2f}".format(*loadavg())


def machine_info() -> dict:
    model, family = "unknown", {}
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            key, _, value = line.partition(":")
            if key == "Model name":
                model = value.strip()
            elif key in ("CPU family", "Model"):
                family[key] = value.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    if family:  # a VM may name only the brand ("AMD EPYC"): family/model tell the generation (AMD 25: Zen 4, 26: Zen 5)
        model += f" (family {family.get('CPU family', '?')}, model {family.get('Model', '?')})"
    ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    flags = ""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^flags\s*:(.*)$", cpuinfo, re.M)
        wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")
        flags = " ".join(f for f in wanted if found and f" {f}" in found.group(1) + " ")
    except OSError:
        pass
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model,
        "cores": os.cpu_count(),
        "ram_gb": round(ram_gb, 1),
        "isa": flags,
        "uptime": uptime_line(),
    }


def machine_lines(info: dict, loads: list[tuple[float, float, float]] | None = None) -> list[str]:
    lines = [
        f"- Date: {info['date']}; machine: {info['cpu']}, {info['cores']} cores, {info['ram_gb']} GiB RAM "
        f"(ISA: {info['isa'] or 'n/a'})."
    ]
    lines.append(f"- `uptime` at start: `{info['uptime']}`")
    if info.get("uptime_end"):
        lines.append(f"- `uptime` at end: `{info['uptime_end']}`")
    if loads:
        one = [load[0] for load in loads]
        lines.append(
            f"- 1-minute load average sampled around each measured process: min {min(one):.2f}, "
            f"median {statistics.median(one):.2f}, max {max(one):.2f} (on {info['cores']} cores; above "
            f"{info['cores']} means other work competed for the CPU)."
        )
    return lines


# ---------------------------------------------------------------- cases


@dataclass(frozen=True)
class CaseSet:
    root: Path  # holds imgs/ and (maybe) gts/
    synthetic: bool

    def image(self, name: str) -> Path:
        return self.root / "imgs" / f"{name}.npz"

    def gt(self, name: str) -> Path | None:
        path = self.root / "gts" / f"{name}.npz"
        return path if path.is_file() else None

    def names(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "imgs").glob("*.npz"))


def case_set(scratch: Path | None = None) -> CaseSet:
    """../shared/data/cases when present, else the project's phantoms written into scratch."""
    if any((SHARED_CASES / "imgs").glob("*.npz")):
        return CaseSet(SHARED_CASES, False)
    sys.path.insert(0, str(REPO))
    from producer.phantoms import write_phantoms

    scratch = Path(scratch or tempfile.mkdtemp(prefix="bench-phantoms-"))
    write_phantoms(scratch)
    return CaseSet(scratch, True)


def baseline_table(path: Path = SHARED_CASES / "BASELINE.md") -> dict[str, dict]:
    """BASELINE.md rows: case -> {shape, boxes, dsc, nsd, wall_s, infer_s} (None where '–')."""
    table: dict[str, dict] = {}
    if not path.is_file():
        return table

    def number(cell: str) -> float | None:
        return float(cell) if re.match(r"^-?\d", cell) else None

    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 7 and re.match(r"[23]DBox_", cells[0]):
            table[cells[0]] = {
                "shape": cells[1],
                "boxes": int(cells[2]),
                "dsc": number(cells[3]),
                "nsd": number(cells[4]),
                "wall_s": number(cells[5]),
                "infer_s": number(cells[6]),
            }
    return table


def case_summary(path: Path) -> dict:
    import numpy as np

    with np.load(path, allow_pickle=False) as npz:
        shape, boxes = npz["imgs"].shape, npz["boxes"]
    summary = {"shape": "x".join(str(s) for s in shape), "boxes": int(len(boxes)), "is_3d": boxes.shape[1] == 6}
    if summary["is_3d"]:
        depth = shape[0]
        summary["pairs"] = int(sum(min(int(b[5]), depth - 1) - max(int(b[2]), 0) + 1 for b in boxes))
    return summary


# ---------------------------------------------------------------- child processes


class ChildFailed(RuntimeError):
    pass


def run_child(cmd: list[str], timeout: float | None = None, env: dict | None = None) -> dict:
    """Run a benchmark child; it prints one JSON object as its last stdout line. Adds wall_s and loads."""
    load_before = loadavg()
    launched = time.time()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})}
    )
    finished = time.time()
    if proc.returncode != 0:
        raise ChildFailed(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise ChildFailed(f"{' '.join(cmd)} printed no JSON:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    result = json.loads(lines[-1])
    # Wall time as the challenge timed it: from launching the process to its output written (t_end).
    result["wall_s"] = result.get("t_end", finished) - launched
    result["process_s"] = finished - launched
    result["load_before"] = load_before
    result["load_after"] = loadavg()
    return result


def engine_child(
    case: Path,
    out_dir: Path | None = None,
    precision: str = "f32",
    latency_repeats: int = 0,
    threads: int = 0,
    extra: list[str] | None = None,
    env: dict | None = None,
) -> dict:
    cmd = [
        str(RUNTIME_PY),
        str(BENCH / "engine_child.py"),
        str(case),
        "--precision",
        precision,
        "--latency-repeats",
        str(latency_repeats),
        "--threads",
        str(threads),
    ]
    if out_dir is not None:
        cmd += ["--out", str(out_dir)]
    return run_child(cmd + list(extra or []), env=env)


def reference_child(
    case: Path, out_dir: Path | None = None, max_boxes: int | None = None, interpolation: str = "area"
) -> dict:
    if not EXPORT_PY.is_file():
        raise ChildFailed(f"export venv python {EXPORT_PY} not found (ops/setup.sh creates it)")
    cmd = [str(EXPORT_PY), str(BENCH / "torch_reference.py"), str(case), "--interpolation", interpolation]
    if out_dir is not None:
        cmd += ["--out", str(out_dir)]
    if max_boxes is not None:
        cmd += ["--reference-boxes", str(max_boxes)]
    return run_child(cmd)


def median(values) -> float:
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else float("nan")


# ---------------------------------------------------------------- RESULTS.md


def replace_section(heading: str, body: str, path: Path = RESULTS_MD) -> None:
    """Replace the '## heading' section (up to the next '## ') with body, or append it; other sections stay."""
    text = path.read_text() if path.is_file() else "# Benchmark results\n"
    block = f"## {heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: block + "\n", text, count=1)
    else:
        text = text.rstrip() + "\n\n" + block
    path.write_text(text.rstrip() + "\n")


def append_to_section(heading: str, block: str, path: Path = RESULTS_MD) -> None:
    """Add a dated block at the end of the '## heading' section (created at the end of the file if missing);
    earlier blocks and other sections stay."""
    text = path.read_text() if path.is_file() else "# Benchmark results\n"
    marker = f"## {heading}\n"
    if f"\n{marker}" not in f"\n{text}":
        text = text.rstrip() + f"\n\n{marker}"
    head, _, tail = text.partition(marker)
    following = tail.find("\n## ")
    body, rest = (tail, "") if following < 0 else (tail[:following], tail[following:])
    body = body.rstrip()
    path.write_text(head + marker + (body + "\n" if body.strip() else "") + "\n" + block.strip() + "\n" + rest)


def md_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def fmt(value, spec: str = ".2f", missing: str = "–") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return missing
    return format(value, spec)
