"""The viewer end to end (issue 25) with the real sessions API and the real model: Debian's headless Chromium
(Playwright) opens a CT series from a real Orthanc through QIDO-RS, scrolls to the box's middle slice, draws the box
with real mouse events, waits for the mask over the image, adds a foreground and a background click, picks the
label's colour, stores. The SEG in the PACS has that colour and equals the session's result, and that equals the
engine's direct run of the same prompts (DSC 1.0). Every request the page makes goes to the service. Screenshots of
each step: test-artifacts/viewer-session/.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import requests

from browser_support import CHROMIUM, CHROMIUM_FLAGS
from orthanc_support import Orthanc, make_series, orthanc_available, served_gateway
from producer.formats.dicom import read_layout
from producer.gateway.viewer import BUNDLE
from worker.contract.prompts import Box, Click, LabelPrompt, Prompts
from worker.contract.study import Study
from worker.engine.engine import Engine, EngineSettings

TOKEN = "viewer-session-token-0123456789abcdef"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "viewer-session"

pytestmark = [
    pytest.mark.skipif(not orthanc_available(), reason="Orthanc with the DICOMweb plugin is not installed"),
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian's chromium is not installed"),
    pytest.mark.skipif(not (BUNDLE / "index.html").is_file(), reason="the viewer bundle is not built (ops/setup.sh)"),
]


@pytest.fixture(scope="module")
def series(tmp_path_factory, pacs):
    folder = tmp_path_factory.mktemp("series") / "ct"
    spec = make_series(folder, 10, 96)
    pacs.upload(sorted(folder.iterdir()))
    return folder, spec


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, pacs, real_models_dir):
    yield from served_gateway(tmp_path_factory.mktemp("gateway"), TOKEN, pacs, real_models_dir)


def dsc(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over the labels of either map of 2|A∩B|/(|A|+|B|)."""
    labels = sorted(set(np.unique(a)) | set(np.unique(b)) - {0})
    return float(np.mean([2 * ((a == k) & (b == k)).sum() / ((a == k).sum() + (b == k).sum()) for k in labels]))


def test_box_and_clicks_in_the_browser_store_the_engines_seg(gateway, pacs, series, real_models_dir):
    folder, spec = series
    playwright_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    seen: list[str] = []
    errors: list[str] = []
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("request", lambda request: seen.append(request.url))
            page.on("pageerror", lambda error: errors.append(str(error)))

            def shot(name: str) -> None:
                page.screenshot(path=str(ARTIFACTS / f"{name}.png"))

            def z_is(z: int) -> None:
                page.wait_for_function(f"() => document.getElementById('slice-info').dataset.z === '{z}'")

            def settled() -> None:
                page.wait_for_function("() => document.body.dataset.busy === undefined", timeout=300_000)

            page.goto(f"{gateway.url}/viewer#token={TOKEN}")
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            page.fill("#patient", "Phantom")
            page.click("#search button[type=submit]")
            page.click(f"#studies button[data-uid='{spec.study_uid}']", timeout=30_000)
            page.click(f"#series-list button[data-uid='{spec.series_uid}']", timeout=30_000)
            page.wait_for_selector("body[data-session]", timeout=300_000)  # the service fetched the series too
            session_id = page.get_attribute("body", "data-session")
            shot("01-series-open")

            # the box's slices 2..7 (keys [ and ]), then its middle slice, 4
            page.focus("#viewport")
            page.keyboard.press("Home")
            z_is(0)
            for _ in range(2):
                page.keyboard.press("ArrowDown")
            page.keyboard.press("[")
            for _ in range(5):
                page.keyboard.press("ArrowDown")
            page.keyboard.press("]")
            for _ in range(3):
                page.keyboard.press("ArrowUp")
            z_is(4)
            page.fill("#label-name", "liver")
            page.focus("#viewport")
            page.keyboard.press("b")
            # around the phantom's organ (centre 46, 50; radius 16 voxels): from inside voxel (30, 34) to inside
            # voxel (62, 66); the box holds every voxel the mouse's rectangle touches
            start = page.evaluate("() => viewerState.imageToPage(30.25, 34.25)")
            end = page.evaluate("() => viewerState.imageToPage(62.75, 66.75)")
            page.mouse.move(*start)
            page.mouse.down()
            page.mouse.move((start[0] + end[0]) / 2, (start[1] + end[1]) / 2, steps=4)
            page.mouse.move(*end, steps=4)
            page.mouse.up()
            page.wait_for_function("() => Number(document.body.dataset.masks || 0) > 0", timeout=300_000)
            settled()
            page.wait_for_timeout(300)
            shot("02-box-mask")
            headers = gateway.headers
            state = requests.get(f"{gateway.url}/v1/sessions/{session_id}", headers=headers, timeout=30).json()
            (liver,) = state["labels"]
            assert liver["box"] == [30, 34, 2, 62, 66, 7], liver

            # a foreground click in the organ, a background click on the mask's right edge (both on slice 4)
            runs = requests.get(
                f"{gateway.url}/v1/sessions/{session_id}/labels/1/mask", params={"z": 4}, headers=headers, timeout=30
            ).json()["rle"]
            flat = np.repeat(np.arange(len(runs)) % 2, runs).astype(bool).reshape(96, 96)
            ys, xs = np.nonzero(flat)
            edge = (int(xs.max()), int(ys[np.argmax(xs)]))
            page.keyboard.press("c")
            page.mouse.click(*page.evaluate("() => viewerState.imageToPage(46.5, 50.5)"), button="left")
            settled()
            page.mouse.click(
                *page.evaluate(f"() => viewerState.imageToPage({edge[0]} + 0.5, {edge[1]} + 0.5)"), button="right"
            )
            settled()
            page.wait_for_timeout(300)
            shot("03-clicks")
            state = requests.get(f"{gateway.url}/v1/sessions/{session_id}", headers=headers, timeout=30).json()
            (liver,) = state["labels"]
            assert [(c["point"], c["positive"]) for c in liver["clicks"]] == [
                ([46, 50, 4], True),
                ([edge[0], edge[1], 4], False),
            ]

            # a colour picked in the page for the label: the session keeps it, the stored SEG carries it
            page.fill("input[aria-label='colour of liver']", "#12c863")
            page.wait_for_selector("body[data-colour-saved='1:18,200,99']", timeout=30_000)
            settled()
            state = requests.get(f"{gateway.url}/v1/sessions/{session_id}", headers=headers, timeout=30).json()
            assert state["labels"][0]["colour"] == [18, 200, 99]
            page.wait_for_timeout(300)
            shot("04-colour")

            page.click("#store")
            page.wait_for_selector("#stored li", timeout=120_000)
            shot("05-stored")
            stored_text = page.text_content("#stored")
            result = requests.get(
                f"{gateway.url}/v1/sessions/{session_id}/result", params={"format": "npz"}, headers=headers, timeout=60
            )
            assert result.status_code == 200, result.text[:500]
            page.close()  # leaving the page ends its session (a keepalive DELETE as the page goes)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                gone = requests.get(f"{gateway.url}/v1/sessions/{session_id}", headers=headers, timeout=30)
                if gone.status_code == 404:
                    break
                time.sleep(0.2)
            assert gone.status_code == 404
        finally:
            browser.close()

    assert not errors, errors
    assert not [url for url in seen if not url.startswith((gateway.url + "/", "blob:", "data:"))]

    with np.load(io.BytesIO(result.content), allow_pickle=False) as data:
        session_labels = data["segs"]
    assert (session_labels == 1).sum() > 100

    # the SEG in the PACS (found by QIDO-RS under the source study) is the session's result
    (seg_series,) = pacs.seg_series(spec.study_uid)
    seg_series_uid = seg_series["0020000E"]["Value"][0]
    assert seg_series_uid in stored_text
    instances = requests.get(
        f"{pacs.dicomweb}/studies/{spec.study_uid}/series/{seg_series_uid}/instances", auth=pacs.auth, timeout=30
    ).json()
    (sop,) = [instance["00080018"]["Value"][0] for instance in instances]
    assert sop in stored_text
    raw = requests.get(f"{pacs.base}/instances/{lookup(pacs, sop)}/file", auth=pacs.auth, timeout=30).content
    seg = hd.seg.segread(io.BytesIO(raw))
    (segment,) = seg.SegmentSequence
    assert list(segment.RecommendedDisplayCIELabValue) == list(hd.color.CIELabColor.from_rgb(18, 200, 99).value)
    uids = list(read_layout(sorted(folder.iterdir())).slice_uids)
    from_pacs = seg.get_pixels_by_source_instance(uids, combine_segments=True)
    np.testing.assert_array_equal(from_pacs, session_labels)

    # and the engine's direct run of the prompts the page made gives the same labels: DSC 1.0
    prompts = Prompts(
        (
            LabelPrompt(
                Box(tuple(liver["box"])), tuple(Click(tuple(c["point"]), c["positive"]) for c in liver["clicks"])
            ),
        ),
        dims=3,
    )
    from producer.discovery import discover
    from producer.formats.registry import format_of

    source = discover(folder.parent).studies[0]
    image_study, _ = format_of(source).load_image(source)
    engine = Engine(EngineSettings(real_models_dir, threads=1))
    direct = engine.segment(Study("direct", "CT", image_study.image, prompts, image_study.spacing)).labels
    assert dsc(direct, from_pacs) == 1.0
    np.testing.assert_array_equal(direct, from_pacs)


def lookup(pacs: Orthanc, sop: str) -> str:
    """Orthanc's own id of an instance (its REST API's /tools/lookup)."""
    found = requests.post(f"{pacs.base}/tools/lookup", data=sop, auth=pacs.auth, timeout=30).json()
    return next(item["ID"] for item in found if item["Type"] == "Instance")
