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
import pytest
import requests

from orthanc_support import GatewayProcess, Orthanc, make_series, orthanc_available
from producer.gateway.viewer import BUNDLE

TOKEN = "viewer-test-token-0123456789abcdef"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "viewer"

pytestmark = pytest.mark.skipif(not orthanc_available(), reason="Orthanc with the DICOMweb plugin is not installed")


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def series(tmp_path_factory, pacs):
    folder = tmp_path_factory.mktemp("series") / "ct"
    spec = make_series(folder, 12, 128, seed=5)
    pacs.upload(sorted(folder.iterdir()))
    return spec


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, pacs, echo_models_dir):
    credentials = {pacs.dicomweb: {"username": pacs.user, "password": pacs.password}}
    service = GatewayProcess(
        tmp_path_factory.mktemp("gateway"),
        TOKEN,
        credentials,
        "--threads",
        "1",
        env={"LITEMEDSAM_MODELS_DIR": str(echo_models_dir)},
    )
    try:
        service.wait_ready()
        yield service
    finally:
        service.stop()


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


def test_viewer_route_says_when_the_bundle_is_not_built(tmp_path):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from producer.gateway.dicomweb import ServerDirectory
    from producer.gateway.viewer import viewer_router

    app = FastAPI()
    app.include_router(viewer_router(ServerDirectory(), [], bundle=tmp_path / "dist"))
    client = TestClient(app)
    response = client.get("/viewer")
    assert response.status_code == 503 and "ops/setup.sh" in response.text
    assert client.get("/viewer/assets/../../pyproject.toml").status_code == 404


# ------------------------------------------------------------------------------------------------ the page


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
        page.goto(f"{gateway.url}/viewer#token={TOKEN}")
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        assert "#token" not in page.url  # the fragment is dropped at once
        rendering = page.get_attribute("body", "data-rendering")  # "gpu" (WebGL) or "cpu" (Cornerstone's fallback)
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
    finally:
        (ARTIFACTS / "console.log").write_text("\n".join([f"rendering: {rendering}", *console]))
        page.close()

    service = gateway.url + "/"
    elsewhere = [url for url in seen if not (url.startswith(service) or url.startswith(("blob:", "data:")))]
    assert not elsewhere, elsewhere
    assert any("/v1/viewer/dicomweb/0/studies" in url for url in seen)  # QIDO-RS through the service
    assert any("/frames/1" in url for url in seen), "the frames came from somewhere else"
    assert not [line for line in console if line.startswith("pageerror")], console
