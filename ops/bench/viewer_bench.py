"""Viewer benchmark (issue 25; a benchmark, not a test): what a user of the /viewer page waits for.

    .venv/bin/python ops/bench/viewer_bench.py [--reps 3] [--series 64x512,24x256] [--no-write]

A real Orthanc (Debian's, with its DICOMweb plugin) holds CT series written like the tests' (RLE Lossless, the
phantom of tests/orthanc_support.py); `producer serve` runs in front of it; Debian's Chromium (headless, no GPU:
WebGL through SwiftShader) opens the page with Playwright. Per series and repetition, in a new tab:
- open: from the "Open series" click to the first slice on screen (metadata through the service's QIDO/WADO
  proxy, the middle slice's frame, decoded in the loader's worker, rendered);
- all slices: from the click until every frame has arrived (the stack prefetch fetches the rest);
- scroll: one arrow-key step to the next slice drawn, once every slice is cached (median of 10 steps);
- first mask: a box drawn around the phantom's organ over the middle 9 slices, from the mouse's release to the
  masks painted (the page's `data-last-ms`: the request, the engine on the service's model, RLE decoding and
  painting); mask after a click: one foreground click on body tissue right of the box, the same way. The
  series' session opens when the series is shown; "n/a" where the service has no /v1/sessions.
A second table sets what the service's DICOMweb proxy adds side by side: every frame of each series fetched one
after another by a Python client, straight from Orthanc and through the proxy (medians of the repetitions).
The tables give medians over the repetitions; RESULTS.md gets a section with the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "ops" / "bench"))
sys.path.insert(0, str(REPO / "tests"))

from common import machine_info, machine_lines, md_table, uptime_line  # noqa: E402

from browser_support import CHROMIUM_FLAGS  # noqa: E402
from orthanc_support import GatewayProcess, Orthanc, make_series  # noqa: E402
from producer.gateway.viewer import BUNDLE  # noqa: E402

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError:  # the test extra is not installed: main() says so
    PlaywrightTimeout = TimeoutError

TOKEN = "viewer-bench-token-0123456789abcdef"


def measure(browser, gateway: GatewayProcess, spec, depth: int, size: int) -> dict:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    frames: list[float] = []
    page.on("response", lambda response: frames.append(time.perf_counter()) if "/frames/" in response.url else None)
    try:
        page.goto(f"{gateway.url}/viewer#token={TOKEN}")
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        page.fill("#study-uid", spec.study_uid)
        page.fill("#series-uid", spec.series_uid)
        started = time.perf_counter()
        page.click("#by-uid button[type=submit]")
        page.wait_for_function("() => document.body.dataset.openMs !== undefined", timeout=120_000)
        opened = time.perf_counter() - started
        deadline = time.perf_counter() + 300
        while len(frames) < depth and time.perf_counter() < deadline:
            page.wait_for_timeout(20)
        every = (max(frames) - started) if len(frames) >= depth else float("nan")
        page.focus("#viewport")
        page.keyboard.press("Home")
        page.wait_for_function("() => document.getElementById('slice-info').dataset.z === '0'")
        steps = []
        for z in range(1, min(depth, 11)):
            begun = time.perf_counter()
            page.keyboard.press("ArrowDown")
            page.wait_for_function(f"() => document.getElementById('slice-info').dataset.z === '{z}'")
            steps.append(time.perf_counter() - begun)
        first_mask = click_mask = float("nan")
        try:  # the session opens after the series is shown (the service fetches the series itself)
            page.wait_for_selector("body[data-session]", timeout=120_000)
            first_mask, click_mask = prompt(page, depth, size)
        except PlaywrightTimeout:
            pass  # no sessions API (the page views only): n/a
        return {
            "open": opened,
            "all": every,
            "scroll": statistics.median(steps),
            "first_mask": first_mask,
            "click_mask": click_mask,
            "renderer": page.get_attribute("body", "data-renderer") or "CPU",
        }
    finally:
        page.close()


def fetch_frames(base: str, headers: dict, auth, metadata_path: str) -> float:
    """Seconds to fetch every frame of a series one after another (a pooled connection, as a browser keeps)."""
    import requests

    with requests.Session() as session:
        session.headers.update(headers)
        session.auth = auth
        started = time.perf_counter()
        instances = json.loads(session.get(f"{base}/{metadata_path}", timeout=60).content)
        accept = {"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"}
        for instance in instances:
            sop = instance["00080018"]["Value"][0]
            response = session.get(
                f"{base}/{metadata_path[: -len('metadata')]}instances/{sop}/frames/1", headers=accept
            )
            response.raise_for_status()
        return time.perf_counter() - started


def prompt(page, depth: int, size: int) -> tuple[float, float]:
    """A box around the phantom's organ over the middle 9 slices (or all), then one foreground click in it."""
    middle = depth // 2
    page.keyboard.press("Home")
    for z in range(max(0, middle - 4), min(depth - 1, middle + 4) + 1):
        if z == max(0, middle - 4):
            page.keyboard.press("[")
        if z == min(depth - 1, middle + 4):
            page.keyboard.press("]")
        page.keyboard.press("ArrowDown")
    page.keyboard.press("Home")
    for _ in range(middle):
        page.keyboard.press("ArrowDown")
    page.wait_for_function(f"() => document.getElementById('slice-info').dataset.z === '{middle}'")
    page.keyboard.press("b")
    cx, cy, r = 0.48 * size, 0.52 * size, 0.2 * size  # the organ of tests/orthanc_support.phantom, and a margin
    start = page.evaluate(f"() => viewerState.imageToPage({cx - r}, {cy - r})")
    end = page.evaluate(f"() => viewerState.imageToPage({cx + r}, {cy + r})")
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=5)
    page.mouse.up()
    page.wait_for_function("() => document.body.dataset.lastMs !== undefined", timeout=600_000)
    first = float(page.get_attribute("body", "data-last-ms")) / 1000
    page.keyboard.press("c")
    page.evaluate("() => { delete document.body.dataset.lastMs; }")
    # body tissue right of the box, outside the mask: the click grows it (one refiner step on the service)
    page.mouse.click(*page.evaluate(f"() => viewerState.imageToPage({cx + 0.3 * size}, {cy})"))
    page.wait_for_function("() => document.body.dataset.lastMs !== undefined", timeout=600_000)
    return first, float(page.get_attribute("body", "data-last-ms")) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--series", default="64x512,24x256", help="DEPTHxSIZE, comma-separated")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()
    if not (BUNDLE / "index.html").is_file():
        sys.exit(f"the viewer bundle is not built ({BUNDLE}): run ops/setup.sh")
    from playwright.sync_api import sync_playwright

    info = machine_info()
    scratch = Path(tempfile.mkdtemp(prefix="viewer-bench-"))
    pacs = Orthanc(scratch / "orthanc")
    pacs.start()
    gateway = None
    rows = []
    proxy_rows = []
    renderer = "?"
    try:
        made = []
        for index, item in enumerate(args.series.split(",")):
            depth, size = (int(v) for v in item.split("x"))
            spec = make_series(scratch / f"series{index}", depth, size, seed=index)
            pacs.upload(sorted((scratch / f"series{index}").iterdir()))
            made.append((depth, size, spec))
        credentials = {pacs.dicomweb: {"username": pacs.user, "password": pacs.password}}
        gateway = GatewayProcess(scratch / "gateway", TOKEN, credentials, "--threads", "1")
        gateway.wait_ready()
        for depth, size, spec in made:
            path = f"studies/{spec.study_uid}/series/{spec.series_uid}/metadata"
            direct, proxied = [], []
            for _ in range(args.reps):
                direct.append(fetch_frames(pacs.dicomweb, {}, pacs.auth, path))
                proxied.append(fetch_frames(f"{gateway.url}/v1/viewer/dicomweb/0", gateway.headers, None, path))
            d, p = statistics.median(direct), statistics.median(proxied)
            proxy_rows.append(
                [f"{depth} x {size} x {size} CT (RLE)", str(args.reps), f"{d:.2f}", f"{p:.2f}", f"{p / d:.2f}x"]
            )
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
            try:
                for depth, size, spec in made:
                    runs = [measure(browser, gateway, spec, depth, size) for _ in range(args.reps)]
                    renderer = runs[-1]["renderer"]

                    def median(key: str, runs=runs) -> str:
                        values = [run[key] for run in runs if run[key] == run[key]]
                        return f"{statistics.median(values):.2f}" if values else "n/a"

                    rows.append(
                        [
                            f"{depth} x {size} x {size} CT (RLE)",
                            str(args.reps),
                            median("open"),
                            median("all"),
                            f"{1000 * statistics.median(run['scroll'] for run in runs):.0f}",
                            median("first_mask"),
                            median("click_mask"),
                        ]
                    )
            finally:
                browser.close()
    finally:
        if gateway is not None:
            gateway.stop()
        pacs.stop()
    info["uptime_end"] = uptime_line()
    header = ["series", "runs", "open: first slice s", "all slices s", "scroll step ms", "first mask s", "click mask s"]
    table = md_table(header, rows)
    proxy_table = md_table(
        ["series", "runs", "frames from Orthanc s", "frames through the proxy s", "proxy / direct"], proxy_rows
    )
    print(table)
    print()
    print(proxy_table)
    if args.no_write:
        return
    section = [
        "",
        f"### {info['date']} — the viewer page (`ops/bench/viewer_bench.py --reps {args.reps}`)",
        "",
        *machine_lines(info),
        f"- Browser: Debian's Chromium, headless, --disable-gpu; Cornerstone3D renders with WebGL on {renderer}.",
        "- Orthanc and `producer serve` on loopback; frames fetched through the service's DICOMweb proxy; the "
        "service's embedded engine (real LiteMedSAM IR, f32, --threads 1) answers the session's prompts.",
        "",
        table,
        "",
        proxy_table,
        "",
    ]
    results = REPO / "ops" / "bench" / "RESULTS.md"
    results.write_text(results.read_text() + "\n".join(section))


if __name__ == "__main__":
    main()
