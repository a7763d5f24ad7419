"""Interactive sessions (issue 23, part 5) through real HTTP: `producer serve` as a process with the real model, a
series opened from a real Orthanc, box and clicks, undo/redo, the result equal to the engine's direct run of the
session's prompts, a label's chosen colour in the SEG and the RTSTRUCT stored into the PACS; an npz upload;
bounds and ownership. Plus the RLE codec."""

from __future__ import annotations

import io
import time

import highdicom as hd
import numpy as np
import pytest
import requests
from pydicom import dcmread

from orthanc_support import GatewayProcess, Orthanc, make_series, served_gateway
from producer.sessions import rle, unrle
from worker.contract.prompts import Box, Click, LabelPrompt, Prompts
from worker.contract.study import Study
from worker.engine.engine import Engine, EngineSettings

TOKEN = "session-test-token-0123456789abcdef"


def test_rle_round_trips_and_starts_with_background():
    mask = np.zeros((3, 5), bool)
    mask[0, 0] = mask[1, 2:5] = mask[2, 4] = True
    runs = rle(mask)
    assert runs[0] == 0 and sum(runs) == mask.size  # a mask that starts on: a zero-length first off run
    np.testing.assert_array_equal(unrle(runs, mask.shape), mask)
    assert rle(np.zeros((2, 2), bool)) == [4] and rle(np.ones((2, 2), bool)) == [0, 4]
    with pytest.raises(ValueError):
        unrle([3], (2, 2))


@pytest.fixture(scope="module")
def series(tmp_path_factory, pacs):
    root = tmp_path_factory.mktemp("series")
    spec = make_series(root / "ct", 10, 96)
    pacs.upload(sorted((root / "ct").iterdir()))
    return root / "ct", spec


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, pacs, real_models_dir):
    yield from served_gateway(tmp_path_factory.mktemp("gateway"), TOKEN, pacs, real_models_dir)


def call(gateway: GatewayProcess, method: str, path: str, **kwargs) -> requests.Response:
    return requests.request(method, f"{gateway.url}{path}", headers=gateway.headers, timeout=120, **kwargs)


def painted(answer: dict, shape: tuple[int, int], canvas: np.ndarray) -> np.ndarray:
    for z, runs in answer["masks"].items():
        canvas[int(z)] = unrle(runs, shape)
    return canvas


@pytest.mark.model
def test_a_session_on_a_pacs_series_equals_the_engine_and_stores_its_seg(gateway, pacs, series, real_models_dir):
    folder, spec = series
    body = {"dicomweb": {"root": pacs.dicomweb, "study": spec.study_uid, "series": spec.series_uid}}
    opened = call(gateway, "POST", "/v1/sessions", json=body)
    assert opened.status_code == 201, opened.text + gateway.log_tail()
    session = opened.json()
    assert session["shape"] == [10, 96, 96] and session["modality"] == "CT" and len(session["slice_uids"]) == 10
    sid = session["id"]

    box = call(
        gateway, "POST", f"/v1/sessions/{sid}/interactions", json={"label": "liver", "box": [30, 34, 2, 62, 64, 7]}
    )
    assert box.status_code == 200, box.text
    first = box.json()
    assert first["number"] == 1 and first["changed"] and first["volume_ml"] > 0 and first["seconds"] > 0
    assert first["colour"] == [221, 130, 101]  # the SEG's colour of a liver
    mask = painted(first, (96, 96), np.zeros((10, 96, 96), bool))
    z = first["changed"][len(first["changed"]) // 2]
    ys, xs = np.nonzero(mask[z])
    inside = [int(xs.mean()), int(ys.mean()), z]
    background = [int(xs.max()), int(ys[np.argmax(xs)]), z]  # an edge voxel of the mask
    clicks = [
        {"label": "liver", "click": {"point": [5, 5, z], "positive": True}},  # far outside: a new part or nothing
        {"label": "liver", "click": {"point": background, "positive": False}},
        {"label": "vessel", "click": {"point": inside, "positive": True}},  # a label of clicks alone
    ]
    for interaction in clicks:
        answer = call(gateway, "POST", f"/v1/sessions/{sid}/interactions", json=interaction)
        assert answer.status_code == 200, answer.text
        if interaction["label"] == "liver":
            mask = painted(answer.json(), (96, 96), mask)
    assert not mask[background[2], background[1], background[0]]  # the background click holds

    undone = call(gateway, "POST", f"/v1/sessions/{sid}/undo", json={"label": "liver"}).json()
    before = painted(undone, (96, 96), mask.copy())
    assert before[background[2], background[1], background[0]]  # back to the mask before that click
    redone = call(gateway, "POST", f"/v1/sessions/{sid}/redo", json={"label": "liver"}).json()
    np.testing.assert_array_equal(painted(redone, (96, 96), before), mask)
    assert call(gateway, "POST", f"/v1/sessions/{sid}/redo", json={"label": "liver"}).status_code == 409

    # a colour chosen for the vessel (the viewer's colour input): in the answers, the SEG and the RTSTRUCT
    vessel = [12, 200, 99]
    coloured = call(gateway, "PATCH", f"/v1/sessions/{sid}/labels/2", json={"colour": vessel})
    assert coloured.status_code == 200, coloured.text
    assert coloured.json()["name"] == "vessel" and coloured.json()["colour"] == vessel
    for bad, status in (({"colour": [300, 0, 0]}, 422), ({"colour": [1, 2]}, 422), ({"colour": ["1", 2, 3]}, 422)):
        assert call(gateway, "PATCH", f"/v1/sessions/{sid}/labels/2", json=bad).status_code == status, bad
    assert call(gateway, "PATCH", f"/v1/sessions/{sid}/labels/3", json={"colour": vessel}).status_code == 404

    state = call(gateway, "GET", f"/v1/sessions/{sid}").json()
    assert [label["name"] for label in state["labels"]] == ["liver", "vessel"]
    assert [label["colour"] for label in state["labels"]] == [[221, 130, 101], vessel]
    result = call(gateway, "GET", f"/v1/sessions/{sid}/result", params={"format": "npz"})
    with np.load(io.BytesIO(result.content), allow_pickle=False) as data:
        segs = data["segs"]
    assert (segs == 1).any() and (segs == 2).any()

    # the engine's direct run of the same prompts gives the same label map, voxel for voxel
    prompts = Prompts(
        tuple(
            LabelPrompt(
                Box(tuple(label["box"])) if label["box"] else None,
                tuple(Click(tuple(c["point"]), c["positive"]) for c in label["clicks"]),
            )
            for label in state["labels"]
        ),
        dims=3,
    )
    from producer.discovery import discover
    from producer.formats.registry import format_of

    source = discover(folder.parent).studies[0]
    image_study, _ = format_of(source).load_image(source)
    engine = Engine(EngineSettings(real_models_dir, threads=1))
    direct = engine.segment(Study("direct", "CT", image_study.image, prompts, image_study.spacing)).labels
    np.testing.assert_array_equal(direct, segs)

    session_seg = hd.seg.segread(io.BytesIO(call(gateway, "GET", f"/v1/sessions/{sid}/result?format=seg").content))
    liver_lab, vessel_lab = (hd.color.CIELabColor.from_rgb(*rgb).value for rgb in ([221, 130, 101], vessel))
    assert [list(item.RecommendedDisplayCIELabValue) for item in session_seg.SegmentSequence] == [
        list(liver_lab),
        list(vessel_lab),
    ]

    before_store = pacs.instance_count()
    stored = call(gateway, "POST", f"/v1/sessions/{sid}/store", json={"formats": ["seg", "rtstruct"]})
    assert stored.status_code == 200, stored.text
    item, rtstruct = stored.json()["stored"]
    assert item["kind"] == "seg" and item["study_instance_uid"] == spec.study_uid
    assert rtstruct["kind"] == "rtstruct" and pacs.instance_count() == before_store + 2
    contours = dcmread(io.BytesIO(orthanc_file(pacs, rtstruct["sop_instance_uid"])))
    assert [list(roi.ROIDisplayColor) for roi in contours.ROIContourSequence] == [[221, 130, 101], vessel]
    seg_bytes = requests.get(
        f"{pacs.dicomweb}/studies/{spec.study_uid}/series/{item['series_instance_uid']}/instances/"
        f"{item['sop_instance_uid']}",
        auth=pacs.auth,
        headers={"Accept": 'multipart/related; type="application/dicom"'},
        timeout=30,
    )
    assert seg_bytes.status_code == 200

    assert call(gateway, "DELETE", f"/v1/sessions/{sid}").status_code == 204
    assert call(gateway, "GET", f"/v1/sessions/{sid}").status_code == 404


def orthanc_file(pacs: Orthanc, sop: str) -> bytes:
    """An instance's file from Orthanc's REST API (found by its SOPInstanceUID)."""
    found = requests.post(f"{pacs.base}/tools/lookup", data=sop, auth=pacs.auth, timeout=30).json()
    orthanc_id = next(entry["ID"] for entry in found if entry["Type"] == "Instance")
    return requests.get(f"{pacs.base}/instances/{orthanc_id}/file", auth=pacs.auth, timeout=30).content


@pytest.mark.model
def test_an_npz_upload_session_on_a_2d_image_and_bad_interactions(gateway, tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 40, (120, 160, 3)).astype(np.uint8)
    image[40:80, 50:110] += 150
    buffer = io.BytesIO()
    np.savez_compressed(buffer, imgs=image)
    files = {"files": ("scan.npz", buffer.getvalue(), "application/octet-stream")}
    opened = call(gateway, "POST", "/v1/sessions", files=files, data={"modality": "Endoscopy"})
    assert opened.status_code == 201, opened.text + gateway.log_tail()
    sid = opened.json()["id"]
    assert opened.json()["shape"] == [120, 160] and opened.json()["slice_uids"] is None
    answer = call(
        gateway, "POST", f"/v1/sessions/{sid}/interactions", json={"label": "lesion", "box": [45, 35, 115, 85]}
    )
    assert answer.status_code == 200, answer.text
    mask = unrle(answer.json()["masks"]["0"], (120, 160))
    assert mask[60, 80] and not mask[5, 5] and answer.json()["volume_ml"] is None
    click = call(
        gateway, "POST", f"/v1/sessions/{sid}/interactions", json={"label": "lesion", "click": {"point": [80, 60]}}
    )
    assert click.status_code == 200 and click.json()["changed"] == []  # already inside: nothing to change
    for bad in (
        {"label": "lesion", "box": [0, 0, 0, 10, 10, 1]},  # a 3D box on a 2D image
        {"label": "lesion", "click": {"point": [500, 5]}},  # off the image
        {"label": "lesion"},  # neither
        {"label": "new", "click": {"point": [5, 5], "positive": False}},  # a label cannot start with background
    ):
        response = call(gateway, "POST", f"/v1/sessions/{sid}/interactions", json=bad)
        assert response.status_code == 422, (bad, response.text)
    png = call(gateway, "GET", f"/v1/sessions/{sid}/slices/0.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert call(gateway, "GET", f"/v1/sessions/{sid}/result", params={"format": "seg"}).status_code == 404
    assert call(gateway, "POST", f"/v1/sessions/{sid}/store", json={}).status_code == 409  # no PACS source
    other = requests.get(f"{gateway.url}/v1/sessions/{sid}", timeout=30)
    assert other.status_code == 401
    assert call(gateway, "DELETE", f"/v1/sessions/{sid}").status_code == 204


def test_session_store_bounds_and_idle_timeout():
    from producer.sessions import SessionLimit, SessionLimits, SessionStore

    class Fake:
        def __init__(self, name, size):
            self.id, self.owner, self.size, self.last_used = name, "o", size, time.time()

            class _Lock:
                def locked(self):
                    return False

            self.lock = _Lock()

        def nbytes(self):
            return self.size

        def close(self):
            closed.append(f"work {self.id}")

    closed = []
    store = SessionStore(
        SessionLimits(max_sessions=2, max_bytes=100, idle_seconds=1e9), lambda s, why: closed.append(why)
    )
    store.add(Fake("a", 40))
    with pytest.raises(SessionLimit, match="bound"):
        store.add(Fake("b", 70))
    store.add(Fake("c", 50))
    with pytest.raises(SessionLimit, match="2 sessions"):
        store.check_room()
    store.limits = SessionLimits(max_sessions=2, max_bytes=100, idle_seconds=0.0)  # everything is idle now
    assert store.owned_by(None) == [] and closed == ["idle", "idle", "work a", "work c"]  # then their work
