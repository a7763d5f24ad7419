"""Issue 24, the gateway holds patient data: allowed PACS only, identities with scopes and ownership, an audit line
for every action, retention and DELETE, per-identity limits, per-address limits on failed credentials, security
headers. The gateway runs in this process (its real app, pipeline and DICOMweb client; a box-filling segmenter
instead of the model); the PACS tests use a real Orthanc, and loopback servers that count what reaches them."""

from __future__ import annotations

import json
import stat
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway_support import (
    ADMIN,
    ALICE,
    BOB,
    READER,
    TOKENS,
    BoxFillSegmenter,
    ServedApp,
    bearer,
    config,
    counting_server,
    jwks_server,
    redirecting_server,
    wait_job,
)
from orthanc_support import Orthanc, make_series, orthanc_available
from producer.gateway.app import create_app
from producer.gateway.dicomweb import RootNotAllowed, ServerDirectory
from producer.gateway.identity import read_tokens
from producer.gateway.limits import LimitSettings

REPO = Path(__file__).resolve().parents[1]
PROMPTS = {"modality": "CT", "boxes": [{"label": "organ", "voxel": [8, 8, 1, 20, 20, 3]}]}
needs_orthanc = pytest.mark.skipif(not orthanc_available(), reason="Orthanc is not installed")


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    folder = tmp_path_factory.mktemp("series")
    spec = make_series(folder / "main", 5, 32)
    return spec, sorted((folder / "main").glob("IM*"))


def upload(client: TestClient, files: list[Path], token: str = ALICE, prompts=PROMPTS, store: str | None = None):
    parts = [("files", (path.name, path.read_bytes(), "application/dicom")) for path in files]
    parts.append(("prompts", (None, json.dumps(prompts))))
    if store is not None:
        parts.append(("store", (None, store)))
    return client.post("/v1/jobs", files=parts, headers=bearer(token))


def audit_lines(cfg) -> list[dict]:
    return [json.loads(line) for line in cfg.audit_path.read_text().splitlines()]


def dicomweb_job(root: str, spec, store="source") -> dict:
    return {
        "source": {"dicomweb": root, "study": spec.study_uid, "series": spec.series_uid},
        "prompts": PROMPTS,
        "store": store,
    }


# ------------------------------------------------------------------------------------------------ identities


def test_named_tokens_with_scopes(tmp_path: Path):
    table = read_tokens(TOKENS, None)
    assert table[ADMIN].name == "admin" and table[ADMIN].is_admin
    assert table[ALICE].scopes == {"submit", "read"} and table[READER].scopes == {"read"}
    (tmp_path / "tokens.json").write_text(json.dumps({"ris": {"token": "r" * 20, "scopes": ["submit"]}}))
    assert read_tokens(None, tmp_path / "tokens.json")["r" * 20].scopes == {"submit"}
    (tmp_path / "tokens").write_text("# site\npacs-bridge:" + "p" * 24 + ":submit+read\n")
    assert read_tokens(None, tmp_path / "tokens")["p" * 24].name == "pacs-bridge"
    for bad, reason in (
        ("0123456789abcdef0123", "give each token a name"),
        ("x:short", "shorter than 16"),
        ("x:" + "t" * 20 + ":superuser", "unknown scope"),
        (f"a:{'t' * 20},b:{'t' * 20}", "given to both"),
    ):
        with pytest.raises(ValueError, match=reason):
            read_tokens(bad, None)


def test_scopes_and_ownership(tmp_path: Path, series):
    _, files = series
    with TestClient(create_app(config(tmp_path), BoxFillSegmenter())) as client:
        assert upload(client, files, token=READER).status_code == 403  # read only: no jobs
        created = upload(client, files)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        job = wait_job(client, job_id, ALICE)
        assert job["state"] == "ok" and job["owner"] == "alice", job
        for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/result", f"/v1/jobs/{job_id}/thumbnail.png"):
            assert client.get(path, headers=bearer(ALICE)).status_code == 200, path
            assert client.get(path, headers=bearer(BOB)).status_code == 404, path  # not bob's: as if it did not exist
            assert client.get(path, headers=bearer(ADMIN)).status_code == 200, path
        assert [j["id"] for j in client.get("/v1/jobs", headers=bearer(ALICE)).json()] == [job_id]
        assert client.get("/v1/jobs", headers=bearer(BOB)).json() == []
        assert [j["id"] for j in client.get("/v1/jobs", headers=bearer(ADMIN)).json()] == [job_id]
        assert client.delete(f"/v1/jobs/{job_id}", headers=bearer(BOB)).status_code == 404
        for admin_only in ("/v1/audit", "/metrics"):
            assert client.get(admin_only, headers=bearer(ALICE)).status_code == 403
            assert client.get(admin_only, headers=bearer(ADMIN)).status_code == 200
        assert client.get("/v1/jobs", headers=bearer("no-such-token-0123456789")).status_code == 401


# ------------------------------------------------------------------------------------------------ allowed PACS


def test_only_configured_roots(tmp_path: Path, series):
    spec, files = series
    directory = ServerDirectory({}, allow=["http://pacs.example:8042/dicom-web/"])
    assert directory.allowed_root("http://PACS.example:8042/dicom-web") == "http://pacs.example:8042/dicom-web"
    with pytest.raises(RootNotAllowed, match="only DICOMweb roots the site configured"):
        directory.open("http://169.254.169.254/latest")
    with counting_server() as elsewhere:
        root = f"{elsewhere.url}/dicom-web"
        cfg = config(tmp_path)
        with TestClient(create_app(cfg, BoxFillSegmenter())) as client:
            for body in (dicomweb_job(root, spec), dicomweb_job(root, spec, store=None)):
                refused = client.post("/v1/jobs", json=body, headers=bearer(ALICE))
                assert refused.status_code == 422 and "only DICOMweb roots the site configured" in refused.text
            refused = upload(client, files, store=root)
            assert refused.status_code == 422 and "is not allowed" in refused.text
            assert client.get("/v1/jobs", headers=bearer(ADMIN)).json() == []  # nothing was created
        assert elsewhere.requests == []
        refused_lines = [line for line in audit_lines(cfg) if line["action"] == "POST /v1/jobs"]
        assert [line["outcome"] for line in refused_lines] == ["422"] * 3


def test_redirect_is_not_followed(tmp_path: Path, series):
    spec, _ = series
    with counting_server() as target, redirecting_server(target.url) as redirector:
        root = f"{redirector.url}/dicom-web"
        with TestClient(create_app(config(tmp_path, dicomweb_allow=(root,)), BoxFillSegmenter())) as client:
            accepted = client.post("/v1/jobs", json=dicomweb_job(root, spec), headers=bearer(ALICE))
            job = wait_job(client, accepted.json()["id"])
        assert job["state"] == "error" and "redirects are not followed" in job["error"], job
        assert redirector.requests and target.requests == []


def test_submit_dicomweb_refuses_other_roots(tmp_path: Path):
    import subprocess

    (tmp_path / "prompts.json").write_text(json.dumps(PROMPTS))
    with counting_server() as elsewhere:
        result = subprocess.run(
            [sys.executable, "-m", "producer.cli", "submit", "--dicomweb", f"{elsewhere.url}/dicom-web"]
            + ["--study", "1.2.3", "--series", "1.2.3.4", "--prompts", str(tmp_path / "prompts.json")]
            + ["--out", str(tmp_path / "out")],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode != 0 and "only DICOMweb roots the site configured" in " ".join(result.stderr.split())
        assert elsewhere.requests == []


# ------------------------------------------------------------------------------------------------ audit, retention


def test_every_route_writes_an_audit_line(tmp_path: Path, series):
    _, files = series
    cfg = config(tmp_path)
    with TestClient(create_app(cfg, BoxFillSegmenter())) as client:
        job_id = upload(client, files).json()["id"]
        wait_job(client, job_id, ALICE)
        calls = [
            ("GET", "/v1/health", None),
            ("GET", "/metrics", ADMIN),
            ("GET", "/", None),
            ("GET", "/docs", None),
            ("GET", "/openapi.json", None),
            ("GET", "/static/page.js", None),
            ("GET", "/static/swagger/swagger-ui.css", None),
            ("GET", "/v1/jobs", ALICE),
            ("GET", f"/v1/jobs/{job_id}", ALICE),
            ("GET", f"/v1/jobs/{job_id}/result", ALICE),
            ("GET", f"/v1/jobs/{job_id}/thumbnail.png", ALICE),
            ("GET", "/v1/audit", ADMIN),
            ("DELETE", f"/v1/jobs/{job_id}", ALICE),
            ("GET", f"/v1/jobs/{job_id}", None),
        ]
        for method, path, token in calls:
            client.request(method, path, headers=bearer(token) if token else {})
    lines = audit_lines(cfg)
    actions = [line["action"] for line in lines]
    for method, path, _token in calls:
        route = path.replace(job_id, "{job_id}") if "static/swagger" not in path else path
        assert f"{method} {route}" in actions, (method, route)
    by_action = {line["action"]: line for line in lines}
    assert by_action["POST /v1/jobs"]["outcome"] == "202" and by_action["POST /v1/jobs"]["source"] == "upload"
    assert by_action["GET /v1/jobs/{job_id}/result"]["actor"] == "alice"
    assert by_action["GET /v1/jobs/{job_id}/result"]["resource_id"] == job_id
    assert by_action["DELETE /v1/jobs/{job_id}"]["outcome"] == "204"
    assert lines[-1]["actor"] == "anonymous" and lines[-1]["outcome"] == "401"
    assert all(line["client"] for line in lines if line["action"].startswith(("GET", "POST", "DELETE")))
    text = cfg.audit_path.read_text()
    for secret in (ALICE, ADMIN, "organ"):  # no token, no prompt
        assert secret not in text
    assert stat.S_IMODE(cfg.audit_path.stat().st_mode) == 0o600
    with TestClient(create_app(cfg, BoxFillSegmenter())) as client:
        mine = client.get("/v1/audit", params={"resource_id": job_id}, headers=bearer(ADMIN)).json()
    assert {"job.started", "job.finished", "DELETE /v1/jobs/{job_id}"} <= {line["action"] for line in mine}


def test_retention_purges_and_delete(tmp_path: Path, series):
    _, files = series
    cfg = config(tmp_path, retention_days=7)
    segmenter = BoxFillSegmenter()
    app = create_app(cfg, segmenter)
    with TestClient(app) as client:
        old, kept = (upload(client, files).json()["id"] for _ in range(2))
        for job_id in (old, kept):
            wait_job(client, job_id, ALICE)
        segmenter.gate = threading.Event()  # a job still running is never purged
        running = upload(client, files).json()["id"]
        gateway = app.state.gateway
        folder = gateway.jobs.folder(old)
        assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700 and stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE((folder / "job.json").stat().st_mode) == 0o600
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in (folder / "input").glob("IM*"))  # uploads
        gateway.jobs.update(old, finished_at=time.time() - 8 * 86400)
        assert gateway.retention.purge() == [old]
        assert not folder.exists() and gateway.jobs.folder(kept).exists()
        assert client.get(f"/v1/jobs/{old}", headers=bearer(ALICE)).status_code == 404
        assert gateway.retention.purge(now=time.time() + 30 * 86400) == [kept]
        assert client.delete(f"/v1/jobs/{running}", headers=bearer(ALICE)).status_code == 409
        segmenter.gate.set()
        wait_job(client, running, ALICE)
        assert client.delete(f"/v1/jobs/{running}", headers=bearer(ALICE)).status_code == 204
        assert not gateway.jobs.folder(running).exists()
        assert client.delete(f"/v1/jobs/{running}", headers=bearer(ALICE)).status_code == 404
    purged = [line for line in audit_lines(cfg) if line["action"] == "job.purged"]
    assert [line["resource_id"] for line in purged] == [old, kept] and purged[0]["owner"] == "alice"


# ------------------------------------------------------------------------------------------------ limits, headers


def test_rate_limit_per_identity(tmp_path: Path):
    cfg = config(tmp_path, limits=LimitSettings("3/minute", 20))
    with TestClient(create_app(cfg, BoxFillSegmenter())) as client:
        assert [client.get("/v1/jobs", headers=bearer(ALICE)).status_code for _ in range(3)] == [200] * 3
        refused = client.get("/v1/jobs", headers=bearer(ALICE))
        assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 60
        assert "alice is over its request rate" in refused.json()["detail"]
        assert client.get("/v1/jobs", headers=bearer(BOB)).status_code == 200  # another identity's own window
    assert [line["outcome"] for line in audit_lines(cfg) if line["actor"] == "alice"][-1] == "429"


def test_unfinished_jobs_per_identity(tmp_path: Path, series):
    _, files = series
    segmenter = BoxFillSegmenter()
    segmenter.gate = threading.Event()
    with TestClient(create_app(config(tmp_path, limits=LimitSettings("1000/minute", 2)), segmenter)) as client:
        assert [upload(client, files).status_code for _ in range(2)] == [202, 202]
        refused = upload(client, files)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "10"
        assert upload(client, files, token=BOB).status_code == 202
        segmenter.gate.set()


# ------------------------------------------------------------------------------------------------ failed credentials

WRONG = "not-a-token-of-anyone-0123456789"
FLOOD = ("10.1.2.3", 40000)  # the TestClient's client address


def _counting_identify(gateway) -> list[str | None]:
    """Every credential the gateway's authenticator checks, in order (the check itself unchanged)."""
    checked: list[str | None] = []
    identify = gateway.auth.identify

    def counted(presented):
        checked.append(presented)
        return identify(presented)

    gateway.auth.identify = counted
    return checked


def test_failed_credentials_are_limited_per_address_before_any_token_check(tmp_path: Path):
    cfg = config(tmp_path, limits=LimitSettings("100000/minute", 20, "5/minute"))
    app = create_app(cfg, BoxFillSegmenter())
    checked = _counting_identify(app.state.gateway)
    with TestClient(app, client=FLOOD) as client:
        wrong = [client.get("/v1/jobs", headers=bearer(WRONG)) for _ in range(3)]
        bare = [client.get("/v1/jobs/" + "0" * 32) for _ in range(2)]  # no credential counts the same
        assert [r.status_code for r in wrong + bare] == [401] * 5
        refused = [client.get("/v1/jobs", headers=bearer(WRONG if k % 2 else ALICE)) for k in range(20)]
        assert {r.status_code for r in refused} == {429}
        assert all(1 <= int(r.headers["retry-after"]) <= 60 for r in refused)
        assert "without a valid credential from this address (5 per 1 minute)" in refused[0].json()["detail"]
        assert len(checked) == 5  # the refused requests' credentials were never compared or decoded
        for response in wrong + bare + refused:  # no credential is ever echoed
            assert WRONG not in response.text and WRONG not in str(response.headers)
        assert client.get("/v1/health").status_code == 200  # routes without a credential are not limited
    with TestClient(app, client=("10.9.9.9", 40000)) as other:
        assert other.get("/v1/jobs", headers=bearer(WRONG)).status_code == 401  # another address: its own count
    lines = audit_lines(cfg)
    flood = [line for line in lines if line["client"] == FLOOD[0] and line["action"] != "GET /v1/health"]
    assert [line["outcome"] for line in flood] == ["401"] * 5 + ["429"]  # one line for the 20 refusals
    assert "1 refused since the last such line" in flood[-1]["detail"] and flood[-1]["actor"] == "anonymous"
    text = cfg.audit_path.read_text()
    assert WRONG not in text and ALICE not in text


def test_a_flood_is_audited_once_per_window_not_once_per_request(tmp_path: Path):
    from producer.gateway.limits import AddressLimited, FailedAuthLimits

    limits = FailedAuthLimits(LimitSettings(failed_auth="2/second"))
    for _ in range(2):
        limits.failed("10.0.0.1", WRONG)
    verdicts = []
    for _ in range(50):
        with pytest.raises(AddressLimited) as refused:
            limits.admit("10.0.0.1", WRONG)
        verdicts.append((refused.value.audit, refused.value.refused))
    assert verdicts[0] == (True, 1) and all(not audit for audit, _ in verdicts[1:])
    time.sleep(1.1)  # the next window: the address may fail again, and its next refusal is audited with the count
    limits.admit("10.0.0.1", WRONG)
    for _ in range(2):
        limits.failed("10.0.0.1", WRONG)
    with pytest.raises(AddressLimited) as refused:
        limits.admit("10.0.0.1", WRONG)
    assert (refused.value.audit, refused.value.refused) == (True, 50)


def test_a_known_user_behind_the_flooding_address_keeps_working(tmp_path: Path):
    """Chosen: a credential that identified someone since the service started (remembered as a keyed hash) passes
    its address's limit and is checked as usual; everything else from that address waits out the window. So Alice,
    who was working before the flood began behind the same NAT, goes on; Bob's first request of the day waits."""
    cfg = config(tmp_path, limits=LimitSettings("100000/minute", 20, "3/minute"))
    app = create_app(cfg, BoxFillSegmenter())
    checked = _counting_identify(app.state.gateway)
    with TestClient(app, client=FLOOD) as client:
        assert client.get("/v1/jobs", headers=bearer(ALICE)).status_code == 200
        assert [client.get("/v1/jobs", headers=bearer(WRONG)).status_code for _ in range(6)] == [401] * 3 + [429] * 3
        assert [client.get("/v1/jobs", headers=bearer(ALICE)).status_code for _ in range(3)] == [200] * 3
        assert client.get("/v1/jobs", headers=bearer(WRONG)).status_code == 429  # her success lifts nothing
        assert client.get("/v1/jobs", headers=bearer(BOB)).status_code == 429
        assert client.get("/v1/jobs", headers=bearer(ALICE[:-1] + "X")).status_code == 429  # a near miss is a miss
    assert checked == [ALICE] + [WRONG] * 3 + [ALICE] * 3


def test_a_credential_that_stops_being_valid_no_longer_passes(tmp_path: Path):
    from producer.gateway.limits import AddressLimited, FailedAuthLimits

    limits = FailedAuthLimits(LimitSettings(failed_auth="1/minute"))
    limits.succeeded("a-jwt-that-will-expire-0123456789")
    limits.failed("10.0.0.1", "a-jwt-that-will-expire-0123456789")  # expired: its next check failed
    with pytest.raises(AddressLimited):
        limits.admit("10.0.0.1", "a-jwt-that-will-expire-0123456789")


def test_the_address_table_is_a_bounded_lru():
    from producer.gateway.limits import AddressLimited, FailedAuthLimits

    limits = FailedAuthLimits(LimitSettings(failed_auth="2/minute", failed_auth_clients=100))
    for _ in range(2):
        limits.failed("192.0.2.1", None)
    with pytest.raises(AddressLimited):
        limits.admit("192.0.2.1", None)
    for n in range(5000):  # a flood from many addresses
        limits.failed(f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}", None)
    assert len(limits) == 100
    counted = {key.split("/")[1] for key in limits._window.storage.storage}  # the counters: remembered ones only
    assert len(counted) <= 100 and "192.0.2.1" not in counted
    limits.admit("192.0.2.1", None)  # forgotten with its count: the bound costs precision, never memory


def test_failures_are_counted_per_host_not_per_ipv6_address():
    from producer.gateway.limits import AddressLimited, FailedAuthLimits, client_key

    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7" and client_key("192.0.2.7") == "192.0.2.7"
    limits = FailedAuthLimits(LimitSettings(failed_auth="3/minute"))
    for n in range(3):  # one host walking through its /64
        limits.failed(f"2001:db8:1:2::{n + 1:x}", None)
    with pytest.raises(AddressLimited):
        limits.admit("2001:db8:1:2::ffff", None)
    limits.admit("2001:db8:1:3::1", None)


def test_tokens_are_compared_in_constant_time(monkeypatch):
    """Every configured token is compared whatever is presented, each comparison of equal-length digests."""
    import producer.gateway.identity as identity

    compared: list[tuple[int, int]] = []
    real = identity.hmac.compare_digest

    def spy(a, b):
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(identity.hmac, "compare_digest", spy)
    check = identity.TokenCheck(read_tokens(TOKENS, None))
    for presented, expected in (("x", None), (WRONG * 30, None), (ALICE, "alice"), (READER, "reader")):
        compared.clear()
        found = check.identify(presented)
        assert (found.name if found else None) == expected
        assert len(compared) == 4 and all(a == b == 32 for a, b in compared), compared


def test_the_failed_auth_limit_is_a_serve_option(tmp_path: Path, monkeypatch):
    from click.testing import CliRunner

    from producer.gateway.cli import serve

    monkeypatch.setenv("LITEMEDSAM_API_TOKENS", TOKENS)
    said = CliRunner().invoke(serve, ["--failed-auth-limit", "lots", "--data-dir", str(tmp_path)])
    assert said.exit_code != 0 and "--failed-auth-limit 'lots': give it as N/second" in said.output
    said = CliRunner().invoke(serve, ["--failed-auth-clients", "0", "--data-dir", str(tmp_path)])
    assert said.exit_code != 0 and "--failed-auth-clients" in said.output


def test_a_served_gateway_survives_a_flood_and_its_users_go_on(tmp_path: Path):
    """Through uvicorn on loopback: 8 threads send 400 requests without a valid credential while Alice polls; the
    flood is refused past its 60 a minute, Alice never is, the audit holds 60 + 1 lines of the flood."""
    import requests

    cfg = config(tmp_path)
    statuses: list[int] = []
    with ServedApp(create_app(cfg, BoxFillSegmenter())) as served:
        assert requests.get(f"{served.url}/v1/jobs", headers=bearer(ALICE), timeout=10).status_code == 200

        def flood(n: int) -> None:
            with requests.Session() as session:
                for k in range(50):
                    headers = bearer(f"{WRONG}{n}{k}") if k % 3 else {}
                    statuses.append(session.get(f"{served.url}/v1/jobs", headers=headers, timeout=10).status_code)

        threads = [threading.Thread(target=flood, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        alice = [requests.get(f"{served.url}/v1/jobs", headers=bearer(ALICE), timeout=10) for _ in range(20)]
        for thread in threads:
            thread.join()
        assert [r.status_code for r in alice] == [200] * 20
        assert requests.get(f"{served.url}/v1/health", timeout=10).status_code == 200
    assert statuses.count(401) == 60 and statuses.count(429) == 340, sorted(set(statuses))
    flood_lines = [line for line in audit_lines(cfg) if line["actor"] == "anonymous"]
    assert [line["outcome"] for line in flood_lines].count("401") == 60
    assert [line["outcome"] for line in flood_lines].count("429") == 1


def test_security_headers(tmp_path: Path):
    with TestClient(create_app(config(tmp_path), BoxFillSegmenter())) as client:
        for path, token in (("/", None), ("/docs", None), ("/v1/jobs", ALICE), ("/v1/health", None)):
            response = client.get(path, headers=bearer(token) if token else {})
            csp = response.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["cache-control"] == "no-store"
        for page in ("/", "/docs"):
            html = client.get(page).text
            assert "<script>" not in html and "<style>" not in html and "http" not in html  # nothing inline
        assert client.get("/static/page.js").headers["content-type"].startswith("text/javascript")


# ------------------------------------------------------------------------------------------------ a real PACS


@needs_orthanc
def test_allowed_pacs_job_life_in_the_audit(tmp_path: Path, pacs, series):
    spec, files = series
    pacs.upload(files)
    with counting_server() as elsewhere:
        cfg = config(tmp_path, credentials=_credentials(pacs))
        with TestClient(create_app(cfg, BoxFillSegmenter())) as client:
            refused = client.post(
                "/v1/jobs", json=dicomweb_job(pacs.dicomweb, spec, store=f"{elsewhere.url}/dw"), headers=bearer(ALICE)
            )
            assert refused.status_code == 422 and "store: the DICOMweb root" in refused.text
            accepted = client.post("/v1/jobs", json=dicomweb_job(pacs.dicomweb, spec), headers=bearer(ALICE))
            assert accepted.status_code == 202, accepted.text
            job_id = accepted.json()["id"]
            job = wait_job(client, job_id, ALICE)
            assert job["state"] == "ok" and job["stored"]["study_uid"] == spec.study_uid, job
            assert client.get(f"/v1/jobs/{job_id}/result", headers=bearer(ALICE)).content[128:132] == b"DICM"
            assert client.delete(f"/v1/jobs/{job_id}", headers=bearer(ALICE)).status_code == 204
            trail = client.get("/v1/audit", params={"resource_id": job_id, "limit": 100}, headers=bearer(ADMIN)).json()
        assert elsewhere.requests == []
    assert pacs.seg_series(spec.study_uid)
    # oldest written first (the API answers newest first), then by time: a request's line is stamped when it began,
    # written when it ended; lines stamped in the same millisecond (the SEG stored, then the job finished) keep the
    # order they were written in
    trail = sorted(reversed(trail), key=lambda line: line["time"])
    life = [(line["action"], line["outcome"]) for line in trail]
    assert life[0] == ("POST /v1/jobs", "202")
    assert [a for a, _ in life if a.startswith("job.")] == ["job.started", "job.fetch", "job.store", "job.finished"]
    assert life[-2:] == [("GET /v1/jobs/{job_id}/result", "200"), ("DELETE /v1/jobs/{job_id}", "204")]
    by_action = {line["action"]: line for line in trail}
    assert by_action["job.fetch"]["source"] == pacs.dicomweb and by_action["job.fetch"]["series_uid"] == spec.series_uid
    assert by_action["job.store"]["stored_to"] == pacs.dicomweb
    assert by_action["job.store"]["stored_uid"] == job["stored"]["sop_uid"]
    assert by_action["POST /v1/jobs"]["stored_to"] == pacs.dicomweb and by_action["POST /v1/jobs"]["actor"] == "alice"
    assert all(line["actor"] == "alice" for line in trail)
    assert pacs.password not in cfg.audit_path.read_text()


def _credentials(pacs: Orthanc) -> dict:
    from producer.gateway.dicomweb import Credentials

    return {pacs.dicomweb: Credentials(pacs.user, pacs.password)}


# ------------------------------------------------------------------------------------------------ OpenID Connect


def _rsa_key(kid: str):
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return key, {**public, "kid": kid, "use": "sig", "alg": "RS256"}


def test_oidc_jwts_against_a_local_jwks(tmp_path: Path, series):
    import jwt

    from producer.gateway.identity import OidcSettings

    _, files = series
    issuer, audience = "https://keycloak.example/realms/hospital", "litemedsam-gateway"
    key, public = _rsa_key("site-key")
    other, _ = _rsa_key("site-key")  # same kid, another key: a forged token

    def token(signing=key, **claims) -> str:
        now = int(time.time())
        body = {"iss": issuer, "aud": audience, "exp": now + 300, "iat": now, "sub": "f3a1", **claims}
        body.setdefault("preferred_username", "dr.house")
        return jwt.encode(body, signing, algorithm="RS256", headers={"kid": "site-key"})

    with jwks_server({"keys": [public]}) as keys:
        oidc = OidcSettings(issuer, audience, jwks_url=f"{keys.url}/certs")  # discovery: the next test
        cfg = config(tmp_path, oidc=oidc)
        with TestClient(create_app(cfg, BoxFillSegmenter())) as client:
            good = token(scope="openid submit read")
            created = upload(client, files, token=good)
            assert created.status_code == 202, created.text
            job = wait_job(client, created.json()["id"], good)
            assert job["owner"] == "oidc:dr.house"
            assert client.get(f"/v1/jobs/{job['id']}", headers=bearer(ALICE)).status_code == 404  # not alice's
            cases = {
                "expired": (token(scope="read", exp=int(time.time()) - 120), 401, "expired"),
                "wrong audience": (token(scope="read", aud="another-service"), 401, "audience"),
                "wrong issuer": (token(scope="read", iss="https://evil.example"), 401, "another issuer"),
                "wrong key": (token(signing=other, scope="read"), 401, "not valid"),
                "no scope": (token(scope="openid"), 403, "lacks the 'read' scope"),
            }
            for name, (bad, status, reason) in cases.items():
                response = client.get("/v1/jobs", headers=bearer(bad))
                assert response.status_code == status and reason in response.json()["detail"], (name, response.text)
            assert client.get("/v1/jobs", headers=bearer(ALICE)).status_code == 200  # named tokens still work
        assert keys.requests  # the keys came from the JWKS server
    text = cfg.audit_path.read_text()
    assert "oidc:dr.house" in text and good not in text


def test_oidc_issuer_discovery(tmp_path: Path):
    """Without --oidc-jwks-url the keys' address comes from the issuer's discovery document."""
    import jwt

    from producer.gateway.identity import Authenticator, OidcSettings

    key, public = _rsa_key("k1")
    with jwks_server({"keys": [public]}) as keys:
        issuer = f"{keys.url}/realms/hospital"
        keys.documents["/realms/hospital/.well-known/openid-configuration"] = {
            "issuer": issuer,
            "jwks_uri": f"{issuer}/certs",
        }
        claims = {"iss": issuer, "aud": "gw", "exp": int(time.time()) + 60, "sub": "u1", "scope": "read admin"}
        token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})
        identity = Authenticator({}, OidcSettings(issuer, "gw")).identify(token)
    assert identity.name == "oidc:u1" and identity.scopes == {"read", "admin"} and identity.via == "oidc"
    assert keys.requests == ["GET /realms/hospital/.well-known/openid-configuration", "GET /realms/hospital/certs"]


@needs_orthanc
def test_oidc_user_runs_a_pacs_job(tmp_path: Path, pacs, series):
    """An OpenID Connect user's DICOMweb job on the real PACS: theirs alone, and the audit names them."""
    import jwt

    from producer.gateway.identity import OidcSettings

    spec, files = series
    pacs.upload(files)
    key, public = _rsa_key("k2")
    issuer, audience = "https://idp.example/realms/h", "gw"
    claims = {"iss": issuer, "aud": audience, "exp": int(time.time()) + 300, "preferred_username": "radiologist"}
    token = jwt.encode({**claims, "scope": "submit read"}, key, algorithm="RS256", headers={"kid": "k2"})
    with jwks_server({"keys": [public]}) as keys:
        cfg = config(
            tmp_path, credentials=_credentials(pacs), oidc=OidcSettings(issuer, audience, jwks_url=f"{keys.url}/k")
        )
        with TestClient(create_app(cfg, BoxFillSegmenter())) as client:
            accepted = client.post(
                "/v1/jobs", json=dicomweb_job(pacs.dicomweb, spec, store=None), headers=bearer(token)
            )
            assert accepted.status_code == 202, accepted.text
            job = wait_job(client, accepted.json()["id"], token)
            assert job["state"] == "ok" and job["owner"] == "oidc:radiologist", job
            assert client.get(f"/v1/jobs/{job['id']}", headers=bearer(BOB)).status_code == 404
    fetched = [line for line in audit_lines(cfg) if line["action"] == "job.fetch"]
    assert [(line["actor"], line["source"], line["outcome"]) for line in fetched] == [
        ("oidc:radiologist", pacs.dicomweb, "ok")
    ]
