"""The viewer (issue 25): its routes and read-only DICOMweb proxy, and the page in Debian's headless Chromium
(Playwright) against a real Orthanc holding a CT series: the series opens through QIDO-RS, the wheel and the arrow
keys change the slice, window presets change the pixels, and every request the page makes goes to the service.

Screenshots of each step are kept under test-artifacts/viewer/ (gitignored) and the pytest tmp dir.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests

from browser_support import CHROMIUM, CHROMIUM_FLAGS
from dicom_factory import SeriesSpec, write_series
from orthanc_support import GatewayProcess, make_series, orthanc_available, phantom, served_gateway
from producer.gateway.viewer import BUNDLE

TOKEN = "viewer-test-token-0123456789abcdef"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "viewer"

pytestmark = pytest.mark.skipif(not orthanc_available(), reason="Orthanc with the DICOMweb plugin is not installed")


@pytest.fixture(scope="module")
def series(tmp_path_factory, pacs):
    folder = tmp_path_factory.mktemp("series") / "ct"
    spec = make_series(folder, 12, 128, seed=5)
    pacs.upload(sorted(folder.iterdir()))
    return spec


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, pacs, echo_models_dir):
    yield from served_gateway(tmp_path_factory.mktemp("gateway"), TOKEN, pacs, echo_models_dir)


def get(gateway, path: str, accept: str | None = None, **kwargs) -> requests.Response:
    headers = {**gateway.headers, **({"Accept": accept} if accept else {})}
    return requests.get(f"{gateway.url}{path}", headers=headers, timeout=30, **kwargs)


# ------------------------------------------------------------------------------------------------ proxy


def test_proxy_reaches_only_configured_servers_with_checked_requests(gateway, pacs, series):
    servers = get(gateway, "/v1/viewer/servers").json()
    assert servers == [{"id": 0, "root": pacs.dicomweb}]
    assert "password" not in json.dumps(servers)

    studies = get(gateway, "/v1/viewer/dicomweb/0/studies", params={"PatientID": "PHANTOM-1"}).json()
    assert series.study_uid in [s["0020000D"]["Value"][0] for s in studies]
    found = get(gateway, f"/v1/viewer/dicomweb/0/studies/{series.study_uid}/series").json()
    assert [s["0020000E"]["Value"][0] for s in found] == [series.series_uid]
    nothing = get(gateway, "/v1/viewer/dicomweb/0/studies", params={"PatientID": "NOBODY"})
    assert nothing.status_code == 200 and nothing.json() == []

    metadata = get(gateway, f"/v1/viewer/dicomweb/0/studies/{series.study_uid}/series/{series.series_uid}/metadata")
    assert metadata.status_code == 200 and len(metadata.json()) == 12
    assert "BulkDataURI" not in metadata.text and f"127.0.0.1:{pacs.port}" not in metadata.text
    sop = metadata.json()[0]["00080018"]["Value"][0]
    frame = get(
        gateway,
        f"/v1/viewer/dicomweb/0/studies/{series.study_uid}/series/{series.series_uid}/instances/{sop}/frames/1",
        accept="multipart/related; type=application/octet-stream; transfer-syntax=*",
    )
    assert frame.status_code == 200 and frame.headers["content-type"].startswith("multipart/related")
    assert len(frame.content) > 128 * 128  # one RLE-compressed or raw 128 x 128 frame in one part

    assert requests.get(f"{gateway.url}/v1/viewer/servers", timeout=10).status_code == 401
    assert requests.get(f"{gateway.url}/v1/viewer/dicomweb/0/studies", timeout=10).status_code == 401
    assert get(gateway, "/v1/viewer/dicomweb/1/studies").status_code == 404  # only index 0 is configured
    refused = get(gateway, "/v1/viewer/dicomweb/0/studies", params={"url": "http://elsewhere/"})
    assert refused.status_code == 422 and "not allowed" in refused.text
    assert get(gateway, "/v1/viewer/dicomweb/0/studies/1.2..3/series").status_code == 422
    assert get(gateway, "/v1/viewer/dicomweb/0/studies/..%2F..%2Fsystem/series").status_code in (404, 422)
    missing = get(gateway, "/v1/viewer/dicomweb/0/studies/1.2.3/series/4.5.6/metadata")
    assert missing.status_code in (200, 404) and "password" not in missing.text
    assert get(gateway, "/v1/viewer/structures").json()[0].keys() == {"name", "rgb"}


def test_viewer_route_says_when_the_bundle_is_not_built(tmp_path, monkeypatch):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from producer.gateway import viewer
    from producer.gateway.routes.viewer import router

    monkeypatch.setattr(viewer, "BUNDLE", tmp_path / "dist")
    app = FastAPI()
    app.include_router(router)
    client = TestClient(app)
    response = client.get("/viewer")
    assert response.status_code == 503 and "ops/setup.sh" in response.text
    assert client.get("/viewer/assets/../../pyproject.toml").status_code == 404


def test_viewer_headers_policy_and_caching(gateway):
    """The viewer's own policy replaces the service's default (one policy, with 'wasm-unsafe-eval'); its assets
    may be cached, its data may not."""
    if not (BUNDLE / "index.html").is_file():
        pytest.skip("the viewer bundle is not built")
    page = requests.get(f"{gateway.url}/viewer", timeout=10)
    asset = requests.get(f"{gateway.url}/viewer/assets/viewer.css", timeout=10)
    for response in (page, asset):
        policies = [v for k, v in response.raw.headers.items() if k.lower() == "content-security-policy"]
        assert len(policies) == 1 and "'wasm-unsafe-eval'" in policies[0] and "frame-ancestors 'none'" in policies[0]
        assert response.headers["x-frame-options"] == "DENY"
    assert "no-store" not in asset.headers.get("cache-control", "")
    servers = get(gateway, "/v1/viewer/servers")
    assert servers.headers["cache-control"] == "no-store"
    jobs_page = requests.get(f"{gateway.url}/", timeout=10)
    assert "'wasm-unsafe-eval'" not in jobs_page.headers["content-security-policy"]  # the default elsewhere


# ------------------------------------------------------------------------------------------------ the page


def _unlabelled(page) -> list[str]:
    """Controls without a name a screen reader can say (no label, no aria-label, no text)."""
    return page.evaluate(
        """() => [...document.querySelectorAll('input, select, button')].filter(control =>
             !(control.labels && control.labels.length) && !control.getAttribute('aria-label')
             && !control.textContent.trim()).map(control => control.id || control.outerHTML)"""
    )


def _view(page, selector: str) -> np.ndarray:
    """An element's pixels cut from a screenshot of the whole page (as a user sees it)."""
    box = page.locator(selector).bounding_box()
    left, top = int(box["x"]), int(box["y"])
    return _grey(page.screenshot())[top : top + int(box["height"]), left : left + int(box["width"])]


def _grey(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.int16)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip("Debian's chromium is not installed")
    if not (BUNDLE / "index.html").is_file():
        pytest.skip(f"the viewer bundle is not built ({BUNDLE}): run ops/setup.sh with Node.js")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def shots(tmp_path):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def shot(page, name: str) -> bytes:
        png = page.screenshot()
        (tmp_path / f"{name}.png").write_bytes(png)
        (ARTIFACTS / f"{name}.png").write_bytes(png)
        return png

    return shot


def test_page_opens_a_series_through_qido_scrolls_and_windows(gateway, series, browser, shots):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    seen: list[str] = []
    page.on("request", lambda request: seen.append(request.url))
    page.on("worker", lambda worker: seen.append(worker.url))
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    rendering = None
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    try:
        # from the jobs page, in the same tab: the token the user gave there carries over (the tab's storage)
        page.goto(f"{gateway.url}/#token={TOKEN}")
        page.click("a[href='/viewer']")
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        assert page.is_hidden("#auth") and page.text_content("#message").startswith("ready")
        assert _unlabelled(page) == []
        # "gpu" (WebGL; here SwiftShader, Chromium's software rasterizer) or "cpu" (Cornerstone's own fallback)
        rendering = f"{page.get_attribute('body', 'data-rendering')} {page.get_attribute('body', 'data-renderer')}"
        shots(page, "01-ready")

        page.fill("#patient", "Phantom")
        page.click("#search button[type=submit]")
        page.click(f"#studies button[data-uid='{series.study_uid}']", timeout=15_000)
        page.click(f"#series-list button[data-uid='{series.series_uid}']", timeout=15_000)
        page.wait_for_function(
            "() => document.getElementById('slice-info').textContent.startsWith('slice 7 / 12')", timeout=30_000
        )
        page.wait_for_function("() => document.body.dataset.openMs !== undefined", timeout=30_000)
        page.wait_for_timeout(500)
        opened = shots(page, "02-series-open")
        info = page.text_content("#slice-info")
        # slice 7 of 12 (index 6) lies 6 x 2.5 mm from the origin's 30 mm along the normal (+z)
        assert info == "slice 7 / 12 · 45.0 mm", info

        def z() -> int:
            return int(page.get_attribute("#slice-info", "data-z"))

        box = page.locator("#viewport").bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.wheel(0, 120)
        page.wait_for_function("() => document.getElementById('slice-info').dataset.z === '7'", timeout=10_000)
        page.mouse.wheel(0, -120)
        page.mouse.wheel(0, -120)
        page.wait_for_function("() => document.getElementById('slice-info').dataset.z === '5'", timeout=10_000)
        page.focus("#viewport")
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowDown")
        page.wait_for_function("() => document.getElementById('slice-info').dataset.z === '8'", timeout=10_000)
        page.keyboard.press("ArrowUp")
        page.wait_for_function("() => document.getElementById('slice-info').dataset.z === '7'", timeout=10_000)
        assert z() == 7
        shots(page, "03-scrolled")

        viewport = page.locator("#viewport")
        page.click("#presets button[data-preset='soft']")
        page.wait_for_timeout(400)
        soft = _grey(viewport.screenshot())
        assert page.text_content("#voi-info") == "W 400 L 40"
        page.click("#presets button[data-preset='lung']")
        page.wait_for_timeout(400)
        lung = _grey(viewport.screenshot())
        assert page.text_content("#voi-info") == "W 1500 L -600"
        shots(page, "04-lung-window")
        page.keyboard.press("4")  # brain
        page.wait_for_timeout(400)
        brain = _grey(viewport.screenshot())
        assert page.text_content("#voi-info") == "W 80 L 40"
        # the phantom's body is 40 HU soft tissue: mid-grey in the soft-tissue window, brighter in lung's
        # (its level -600 puts 40 HU near white), and its noise is stretched in the narrow brain window
        assert np.abs(soft - lung).mean() > 5 and np.abs(soft - brain).mean() > 1
        assert len(_grey(opened)) > 0

        if rendering.startswith("gpu"):  # sagittal and coronal views: a Cornerstone volume (WebGL)
            page.keyboard.press("1")
            page.keyboard.press("o")
            page.wait_for_selector("body[data-ortho='ready']", timeout=60_000)
            page.wait_for_timeout(1500)
            shots(page, "04b-orthogonal")
            for view in ("#sagittal", "#coronal"):
                picture = _view(page, view)
                # the body (40 HU) is mid-grey in the soft-tissue window, the organ brighter: not a blank view
                assert picture.std() > 20 and (picture > 60).mean() > 0.1, view
            # the axial slice is a reference line across them: it moves with the slice
            before = _view(page, "#sagittal")
            page.focus("#viewport")
            for _ in range(3):
                page.keyboard.press("ArrowUp")
            page.wait_for_timeout(500)
            after = _view(page, "#sagittal")
            assert after.std() > 20 and np.abs(after - before).max() > 50
            page.keyboard.press("o")
            assert page.locator("#ortho").is_hidden()
    finally:
        (ARTIFACTS / "console.log").write_text("\n".join([f"rendering: {rendering}", *console]))
        page.close()

    service = gateway.url + "/"
    elsewhere = [url for url in seen if not (url.startswith(service) or url.startswith(("blob:", "data:")))]
    assert not elsewhere, elsewhere
    assert any("/v1/viewer/dicomweb/0/studies" in url for url in seen)  # QIDO-RS through the service
    assert any("/frames/1" in url for url in seen), "the frames came from somewhere else"
    assert not [line for line in console if line.startswith("pageerror")], console
    assert not [line for line in console if "Content Security Policy" in line], console


# ------------------------------------------------------------------------------------------------ prompts


def rle(mask: np.ndarray) -> list[int]:
    """The sessions API's run lengths of one slice (row-major, background first)."""
    flat = mask.ravel().astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0, *runs]


class ContractDouble:
    """The interactive sessions HTTP contract answered inside the browser (Playwright's request routing), with
    a plain geometric "engine": a box fills its voxels, a click sets (foreground) or clears (background) a 5 x 5
    square on its slice. It records what the page sends. It stands in for the service's sessions API only to test
    the page's half of the contract: coordinates, the slice order, RLE masks, undo and store."""

    def __init__(self, shape: tuple[int, int, int], spacing: list[float], slice_uids: list[str] | None):
        self.shape, self.spacing, self.slice_uids = shape, spacing, slice_uids
        self.sent: list[tuple[str, str, dict | None]] = []
        self.history: dict[str, list[np.ndarray]] = {}
        self.at: dict[str, int] = {}

    def document(self) -> dict:
        return {
            "id": "s1",
            "shape": list(self.shape),
            "spacing": self.spacing,
            "modality": "CT",
            "labels": [],
            "slice_uids": self.slice_uids,
        }

    def answer(self, name: str, before: np.ndarray) -> dict:
        after = self.history[name][self.at[name]]
        changed = [int(z) for z in np.flatnonzero((before != after).any(axis=(1, 2)))]
        voxel_ml = float(np.prod(self.spacing)) / 1000
        return {
            "label": name,
            "number": list(self.history).index(name) + 1,
            "changed": changed,
            "masks": {str(z): rle(after[z]) for z in changed},
            "seconds": 0.01,
            "volume_ml": float(after.sum()) * voxel_ml,
            "colour": [221, 130, 101],
        }

    def slice_png(self, z: int) -> bytes:
        """The engine's 8-bit slice z: a left-to-right ramp with a bright square whose size grows with z."""
        from PIL import Image

        _, height, width = self.shape
        image = np.tile(np.linspace(0, 160, width, dtype=np.uint8), (height, 1))
        image[10 : 14 + 2 * z, 10 : 14 + 2 * z] = 255
        out = io.BytesIO()
        Image.fromarray(image).save(out, format="PNG")
        return out.getvalue()

    def interact(self, body: dict) -> dict:
        name = body["label"]
        if name not in self.history:
            self.history[name], self.at[name] = [np.zeros(self.shape, bool)], 0
        before = self.history[name][self.at[name]]
        mask = before.copy()
        if "box" in body:
            x0, y0, z0, x1, y1, z1 = body["box"]
            mask[z0 : z1 + 1, y0 : y1 + 1, x0 : x1 + 1] = True
        else:
            x, y, z = body["click"]["point"]
            mask[z, max(0, y - 2) : y + 3, max(0, x - 2) : x + 3] = body["click"]["positive"]
        self.history[name] = self.history[name][: self.at[name] + 1] + [mask]
        self.at[name] += 1
        return self.answer(name, before)

    def step(self, name: str, delta: int) -> dict:
        before = self.history[name][self.at[name]]
        self.at[name] = min(len(self.history[name]) - 1, max(0, self.at[name] + delta))
        return self.answer(name, before)

    def route(self, route) -> None:
        request = route.request
        path = request.url.split("://", 1)[1].split("/", 1)[1].split("?")[0]
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            body = {"multipart": request.post_data_buffer}  # Playwright leaves the files' bytes out
        else:
            body = request.post_data_json if request.method == "POST" and request.post_data else None
        self.sent.append((request.method, "/" + path, body))
        if request.method == "POST" and path == "v1/sessions":
            reply, status = self.document(), 201
        elif path.endswith("/result"):
            format_ = request.url.rsplit("format=", 1)[-1]
            return route.fulfill(status=200, content_type="application/octet-stream", body=f"{format_} of s1".encode())
        elif path.endswith(".png"):
            return route.fulfill(
                status=200, content_type="image/png", body=self.slice_png(int(path[:-4].rsplit("/")[-1]))
            )
        elif path.endswith("/interactions"):
            reply, status = self.interact(body), 200
        elif path.endswith("/undo") or path.endswith("/redo"):
            reply, status = self.step(body["label"], -1 if path.endswith("/undo") else 1), 200
        elif path.endswith("/store"):
            reply, status = (
                {"stored": [{"sop_instance_uid": "1.2.3.4", "series_instance_uid": "1.2.3", "kind": "seg"}]},
                200,
            )
        elif request.method == "DELETE":
            return route.fulfill(status=204)
        else:
            reply, status = {"detail": f"not in the contract double: {request.method} {path}"}, 404
        route.fulfill(status=status, content_type="application/json", body=json.dumps(reply))


def _changed_region(before: bytes, after: bytes, area: dict) -> tuple[int, int, int, int]:
    """Where two page screenshots differ inside the viewport (page coordinates)."""
    left, top = int(area["x"]), int(area["y"])
    window = np.s_[top : top + int(area["height"]), left : left + int(area["width"])]
    rows, columns = np.nonzero(np.abs(_grey(before)[window] - _grey(after)[window]) > 8)
    assert rows.size, "the overlay did not change the picture"
    return left + int(columns.min()), top + int(rows.min()), left + int(columns.max()), top + int(rows.max())


def test_page_prompts_follow_the_sessions_contract(gateway, series, browser, shots):
    metadata = get(gateway, f"/v1/viewer/dicomweb/0/studies/{series.study_uid}/series/{series.series_uid}/metadata")
    by_position = sorted(metadata.json(), key=lambda i: i["00200032"]["Value"][2])
    # the session's order is the one the page must follow: here the opposite of the page's own sort
    slice_uids = [instance["00080018"]["Value"][0] for instance in reversed(by_position)]
    double = ContractDouble((12, 128, 128), [0.7, 0.8, 2.5], slice_uids)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    seen: list[str] = []
    page.on("request", lambda request: seen.append(request.url))
    console: list[str] = []
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    page.route("**/v1/sessions**", double.route)
    try:
        page.goto(f"{gateway.url}/viewer#token={TOKEN}")
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        assert "#token" not in page.url  # the fragment is dropped at once
        page.fill("#study-uid", series.study_uid)
        page.fill("#series-uid", series.series_uid)
        page.click("#by-uid button[type=submit]")
        page.wait_for_selector("body[data-session='s1']", timeout=30_000)
        page.wait_for_timeout(300)
        assert double.sent[0][2] == {
            "dicomweb": {
                "root": get(gateway, "/v1/viewer/servers").json()[0]["root"],
                "study": series.study_uid,
                "series": series.series_uid,
            }
        }
        page.focus("#viewport")
        page.keyboard.press("Home")
        # z = 0 is the session's first slice: the last one along the normal (30 + 11 x 2.5 mm)
        page.wait_for_function("() => document.getElementById('slice-info').dataset.z === '0'")
        assert page.text_content("#slice-info") == "slice 1 / 12 · 57.5 mm"
        for _ in range(5):
            page.keyboard.press("ArrowDown")
        page.keyboard.press("[")  # the box's first slice: 5
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowDown")
        page.keyboard.press("]")  # its last: 7
        page.keyboard.press("ArrowUp")
        page.wait_for_function("() => document.getElementById('slice-info').dataset.z === '6'")
        page.fill("#label-name", "liver")
        page.focus("#viewport")
        page.keyboard.press("b")
        plain = page.screenshot()

        area = page.locator("#viewport").bounding_box()
        cx, cy = area["x"] + area["width"] / 2, area["y"] + area["height"] / 2
        start, end = (cx - 90, cy - 70), (cx + 60, cy + 80)
        page.mouse.move(*start)
        page.mouse.down()
        page.mouse.move(cx, cy, steps=4)
        page.mouse.move(*end, steps=4)
        page.mouse.up()
        page.wait_for_function("() => Number(document.body.dataset.masks || 0) === 3", timeout=10_000)
        page.wait_for_timeout(300)
        boxed = shots(page, "05-box-mask")
        method, path, body = double.sent[-1]
        assert (method, path) == ("POST", "/v1/sessions/s1/interactions") and body["label"] == "liver"
        x0, y0, z0, x1, y1, z1 = body["box"]
        assert (z0, z1) == (5, 7) and 0 <= x0 < x1 <= 127 and 0 <= y0 < y1 <= 127
        # the mask (exactly the box here) is painted over the pixels the mouse's box touched: it holds the drawn
        # rectangle and passes it by less than one image pixel on each side (+1 screen pixel of rounding)
        left, top, right, bottom = _changed_region(plain, boxed, area)
        px, py = (right - left + 1) / (x1 - x0 + 1), (bottom - top + 1) / (y1 - y0 + 1)  # screen px per image px
        assert 3 < px < 8 and 3 < py < 8 and py / px == pytest.approx(0.8 / 0.7, rel=0.05)  # the pixel spacing
        assert start[0] - px - 1 < left <= start[0] + 1 and start[1] - py - 1 < top <= start[1] + 1
        assert end[0] - 1 <= right < end[0] + px + 1 and end[1] - 1 <= bottom < end[1] + py + 1
        volume = (x1 - x0 + 1) * (y1 - y0 + 1) * 3 * 0.7 * 0.8 * 2.5 / 1000
        assert page.text_content("#labels tbody tr td:last-child") == f"{volume:.2f}"

        page.keyboard.press("h")  # hide, then show again
        page.wait_for_timeout(200)
        hidden = _grey(page.screenshot())[int(area["y"]) : int(area["y"] + area["height"]), int(area["x"]) :]
        assert (
            np.abs(hidden - _grey(plain)[int(area["y"]) : int(area["y"] + area["height"]), int(area["x"]) :]).max() <= 8
        )
        page.keyboard.press("h")

        page.keyboard.press("c")
        page.mouse.click(cx + 40, cy + 40, button="right")  # background, inside the box
        page.wait_for_function("() => document.body.dataset.busy === undefined")
        page.mouse.click(cx + 100, cy - 100, button="left")  # foreground, outside it
        page.wait_for_function("() => document.body.dataset.busy === undefined")
        page.wait_for_timeout(300)
        shots(page, "06-clicks")
        negative, positive = double.sent[-2][2]["click"], double.sent[-1][2]["click"]
        assert negative["positive"] is False and positive["positive"] is True
        for click, (sx, sy) in ((negative, (cx + 40, cy + 40)), (positive, (cx + 100, cy - 100))):
            x, y, z = click["point"]
            assert z == 6
            assert abs(x0 + (sx - left) / px - (x + 0.5)) <= 0.75
            assert abs(y0 + (sy - top) / py - (y + 0.5)) <= 0.75

        page.keyboard.press("Control+z")
        page.wait_for_function("() => document.body.dataset.busy === undefined")
        assert double.sent[-1][1:] == ("/v1/sessions/s1/undo", {"label": "liver"})
        page.keyboard.press("Control+y")
        page.wait_for_function("() => document.body.dataset.busy === undefined")
        assert double.sent[-1][1] == "/v1/sessions/s1/redo"

        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowDown")  # slice 8: outside the box's slices, nothing painted
        page.wait_for_function("() => document.getElementById('slice-info').dataset.z === '8'")
        page.click("#store")
        page.wait_for_selector("#stored li")
        assert double.sent[-1][1:] == ("/v1/sessions/s1/store", {"formats": ["seg"]})
        assert "SEG 1.2.3.4" in page.text_content("#stored")
        assert _unlabelled(page) == []  # the label rows' show, colour and opacity controls too
        shots(page, "07-stored")
        for button, name, content in (
            ("#download-seg", "s1.dcm", b"seg of s1"),
            ("#download-nifti", "s1.nii.gz", b"nifti of s1"),
        ):
            with page.expect_download() as download:
                page.click(button)
            assert download.value.suggested_filename == name
            assert Path(download.value.path()).read_bytes() == content
    finally:
        page.close()
    assert not console, console
    assert not [url for url in seen if not url.startswith((gateway.url + "/", "blob:", "data:"))]


def test_uploaded_files_are_shown_as_the_sessions_slices(gateway, browser, shots, tmp_path):
    double = ContractDouble((4, 64, 80), [0.9, 0.9, 3.0], None)
    upload = tmp_path / "case.npz"
    np.savez_compressed(upload, imgs=np.zeros((4, 64, 80), np.uint8))
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    seen: list[str] = []
    page.on("request", lambda request: seen.append(request.url))
    console: list[str] = []
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    page.route("**/v1/sessions**", double.route)
    try:
        page.goto(f"{gateway.url}/viewer#token={TOKEN}")
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        page.set_input_files("#files", str(upload))
        page.click("#upload button[type=submit]")
        page.wait_for_function(
            "() => document.getElementById('slice-info').textContent.startsWith('slice 3 / 4')", timeout=30_000
        )
        page.wait_for_timeout(300)
        assert b'filename="case.npz"' in double.sent[0][2]["multipart"]
        viewport = page.locator("#viewport")
        third = _grey(viewport.screenshot())
        shots(page, "08-upload")
        assert third.max() > 200 and third.std() > 10  # the ramp and the square are drawn, not a black canvas
        page.focus("#viewport")
        page.keyboard.press("ArrowDown")
        page.wait_for_function("() => document.getElementById('slice-info').dataset.z === '3'")
        page.wait_for_timeout(300)
        fourth = _grey(viewport.screenshot())
        assert (fourth > 200).sum() > (third > 200).sum()  # slice 3's square is larger than slice 2's
        page.keyboard.press("b")
        area = viewport.bounding_box()
        cx, cy = area["x"] + area["width"] / 2, area["y"] + area["height"] / 2
        page.mouse.move(cx - 50, cy - 50)
        page.mouse.down()
        page.mouse.move(cx + 50, cy + 50, steps=5)
        page.mouse.up()
        page.wait_for_function("() => Number(document.body.dataset.masks || 0) === 1", timeout=10_000)
        x0, y0, z0, x1, y1, z1 = double.sent[-1][2]["box"]
        assert (z0, z1) == (3, 3) and 0 <= x0 < x1 <= 79 and 0 <= y0 < y1 <= 63
        assert 39 <= (x0 + x1) / 2 <= 41 and 31 <= (y0 + y1) / 2 <= 33  # drawn around the image's middle
    finally:
        page.close()
    assert not console, console
    assert any(url.endswith("/v1/sessions/s1/slices/3.png") for url in seen)
    assert not [url for url in seen if not url.startswith((gateway.url + "/", "blob:", "data:"))]


def test_a_session_of_other_images_leaves_the_page_viewing_only(gateway, series, browser):
    double = ContractDouble((12, 128, 128), [0.7, 0.8, 2.5], [f"1.2.3.{z}" for z in range(12)])
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.route("**/v1/sessions**", double.route)
    try:
        page.goto(f"{gateway.url}/viewer#token={TOKEN}")
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        page.fill("#study-uid", "../../../jobs")  # pasted text is checked before it becomes part of a path
        page.fill("#series-uid", series.series_uid)
        assert page.eval_on_selector("#study-uid", "input => input.validity.valid") is False
        page.fill("#study-uid", series.study_uid)
        page.click("#by-uid button[type=submit]")
        page.wait_for_function("() => document.getElementById('message').textContent.startsWith('viewing only')")
        assert "not this series' images" in page.text_content("#message")
        assert page.is_disabled("#store") and page.get_attribute("body", "data-session") is None
        assert double.sent[-1][:2] == ("DELETE", "/v1/sessions/s1")  # the useless session is ended
    finally:
        page.close()


def jpeg_series(folder: Path, depth: int = 6, size: int = 96) -> SeriesSpec:
    """An 8-bit series in JPEG Baseline (lossy; what many PACS send): the phantom's HU mapped to 0..255 by a
    soft-tissue window, each slice compressed by Pillow and encapsulated."""
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    spec = SeriesSpec(stored=phantom(depth, size, seed=9), intercept=-1024.0)
    for path in write_series(folder, spec):
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(np.float32) - 1024.0
        grey = np.clip((hu + 160.0) / 400.0 * 255.0, 0, 255).astype(np.uint8)
        out = io.BytesIO()
        Image.fromarray(grey).save(out, format="JPEG", quality=95)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.WindowCenter, ds.WindowWidth = 128, 256
        ds.PixelData = encapsulate([out.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.save_as(path, enforce_file_format=True)
    return spec


def test_jpeg_series_decodes_in_webassembly_under_the_pages_policy(gateway, pacs, browser, shots, tmp_path):
    spec = jpeg_series(tmp_path / "jpeg")
    pacs.upload(sorted((tmp_path / "jpeg").iterdir()))
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    seen: list[str] = []
    page.on("request", lambda request: seen.append(request.url))
    page.on("worker", lambda worker: worker.on("request", lambda request: seen.append(request.url)))
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    try:
        page.goto(f"{gateway.url}/viewer#token={TOKEN}")
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        page.fill("#study-uid", spec.study_uid)
        page.fill("#series-uid", spec.series_uid)
        page.click("#by-uid button[type=submit]")
        page.wait_for_function("() => document.body.dataset.openMs !== undefined", timeout=30_000)
        page.wait_for_timeout(500)
        shots(page, "09-jpeg")
        picture = _grey(page.locator("#viewport").screenshot())
        # the body (40 HU: grey 127 in this window) and the brighter organ are drawn: not a blank or failed slice
        assert (np.abs(picture - 127) < 20).mean() > 0.15 and (picture > 160).mean() > 0.02
    finally:
        page.close()
    assert not [line for line in console if "Content Security Policy" in line or line.startswith("pageerror")], console
    assert not [url for url in seen if not url.startswith((gateway.url + "/", "blob:", "data:"))]
    # the decoder compiled libjpeg-turbo's WebAssembly, fetched from the service
    assert any(url.endswith("/viewer/assets/@cornerstonejs/codec-libjpeg-turbo-8bit/decodewasm") for url in seen), seen


def test_a_slice_refused_by_the_rate_limit_is_said_on_the_page(
    tmp_path_factory, pacs, series, browser, echo_models_dir
):
    """Every frame is one request against the caller's --rate-limit: when it runs out the page says so."""
    credentials = {pacs.dicomweb: {"username": pacs.user, "password": pacs.password}}
    service = GatewayProcess(
        tmp_path_factory.mktemp("limited"),
        TOKEN,
        credentials,
        "--rate-limit",
        "8/minute",
        env={"LITEMEDSAM_MODELS_DIR": str(echo_models_dir)},
    )
    try:
        service.wait_ready()
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        try:
            page.goto(f"{service.url}/viewer#token={TOKEN}")
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            page.fill("#study-uid", series.study_uid)
            page.fill("#series-uid", series.series_uid)
            page.click("#by-uid button[type=submit]")
            page.wait_for_selector("body[data-load-failed='429']", timeout=30_000)
            assert "--rate-limit" in page.text_content("#load-error") and page.is_visible("#load-error")
        finally:
            page.close()
    finally:
        service.stop()
