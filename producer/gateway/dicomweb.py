"""One DICOMweb server: fetch a series (WADO-RS), find instances (QIDO-RS), store a SEG (STOW-RS).

- Credentials come from the site's configuration (`--dicomweb-credentials FILE`, see `load_credentials`), never
  from a job: a root URL carrying a user or password is refused.
- Only the roots the site configured may be read from or stored to (`ServerDirectory.allowed_root`): the
  credentials file's roots and those given with `--dicomweb-allow`. A server's redirect is never followed (it could
  point anywhere): it is an error naming the server.
- Every request has a timeout (connect and read) and idempotent failures are retried a bounded number of times
  with backoff (connection errors, timeouts, 429/502/503/504). Storing is idempotent too: SEG UIDs are derived
  from the source and the mask, and `store_instance` first asks whether the instance is already there.
- Errors are `DicomwebError` with a reason a person can act on ("not found", "refused the credentials",
  "unreachable", "did not answer within 30 s", "rejected the SEG"). They name the server by its redacted root
  (no user info, query or fragment) and never include a credential or a response body.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import requests
from pydicom.dataset import Dataset
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

log = logging.getLogger(__name__)
ORIGINAL_TRANSFER_SYNTAX = (("application/dicom", "*"),)  # WADO-RS: the instances as stored, no transcoding
RETRY_STATUSES = (429, 502, 503, 504)


class DicomwebError(Exception):
    """A DICOMweb exchange failed; the message is safe to show (no credentials)."""


class RootNotAllowed(DicomwebError):
    """A root URL the site did not configure (a job may not name any server it likes)."""


ALLOW_RULE = "only DICOMweb roots the site configured may be used (--dicomweb-credentials, --dicomweb-allow)"


def redact(url: str) -> str:
    """The URL without user info, query or fragment (what errors and logs may show)."""
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    except ValueError:
        return "<unparseable URL>"


def normalise_root(url: str) -> str:
    """A DICOMweb root as given by a job or the configuration, checked and without a trailing slash."""
    if not isinstance(url, str) or not url.strip():
        raise DicomwebError("the DICOMweb root URL is empty")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DicomwebError(f"the DICOMweb root {redact(url)!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise DicomwebError(
            f"the DICOMweb root {redact(url)} carries credentials: configure them for the service "
            "(--dicomweb-credentials), never in a job"
        )
    if parts.query or parts.fragment:
        raise DicomwebError(f"the DICOMweb root {redact(url)} must not have a query or fragment")
    return redact(url).rstrip("/")


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = None
    token: str | None = None

    def __repr__(self) -> str:  # never print a secret by accident
        kind = "token" if self.token else "basic" if self.username else "none"
        return f"Credentials({kind})"

    def apply(self, session: requests.Session) -> None:
        if self.token:
            session.headers["Authorization"] = f"Bearer {self.token}"
        elif self.username is not None:
            session.auth = (self.username, self.password or "")


def load_credentials(path: Path) -> dict[str, Credentials]:
    """`{"<root URL>": {"username": ..., "password": ...}}` or `{"<root URL>": {"token": ...}}`."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read DICOMweb credentials ({type(error).__name__})") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a JSON object keyed by DICOMweb root URL")
    table = {}
    for root, entry in document.items():
        where = f"{path}: entry {redact(root)}"
        if not isinstance(entry, dict) or set(entry) - {"username", "password", "token"}:
            raise ValueError(f'{where} must be {{"username": ..., "password": ...}} or {{"token": ...}}')
        if ("token" in entry) == ("username" in entry):
            raise ValueError(f'{where}: give either "token" or "username" (+ "password")')
        if not all(isinstance(value, str) for value in entry.values()):
            raise ValueError(f"{where}: values must be strings")
        try:
            table[normalise_root(root)] = Credentials(entry.get("username"), entry.get("password"), entry.get("token"))
        except DicomwebError as error:
            raise ValueError(f"{path}: {error}") from None
    return table


@dataclass(frozen=True)
class ClientSettings:
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    retries: int = 2  # further attempts after the first
    backoff: float = 0.5  # seconds, doubled per attempt


class _TimeoutSession(requests.Session):
    """A session whose every request has the configured timeout (dicomweb-client passes none) and follows no
    redirect: a 3xx answer is an error naming the server (a redirect could lead to any host)."""

    def __init__(self, root: str, timeout: tuple[float, float]):
        super().__init__()
        self.root, self.timeout = root, timeout

    def request(self, method, url, **kwargs):
        kwargs.setdefault("timeout", self.timeout)
        return super().request(method, url, **kwargs)

    def send(self, request, **kwargs):  # every request passes here, also those sent as prepared requests
        kwargs["allow_redirects"] = False
        response = super().send(request, **kwargs)
        if 300 <= response.status_code < 400:
            response.close()
            raise DicomwebError(
                f"the DICOMweb server {self.root} answered with a redirect (HTTP {response.status_code}); "
                "redirects are not followed: configure the root the server really answers at"
            )
        return response


def _session(root: str, credentials: Credentials | None, settings: ClientSettings) -> requests.Session:
    session = _TimeoutSession(root, (settings.connect_timeout, settings.read_timeout))
    retry = Retry(
        total=settings.retries,
        connect=settings.retries,
        read=settings.retries,
        status=settings.retries,
        backoff_factor=settings.backoff,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET", "POST"}),
        raise_on_status=False,
    )
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    if credentials is not None:
        credentials.apply(session)
    return session


@dataclass(frozen=True)
class StoredInstance:
    study_uid: str
    series_uid: str
    sop_uid: str
    already_present: bool  # the server held it before: nothing new was stored


class DicomwebServer:
    def __init__(self, root: str, credentials: Credentials | None = None, settings: ClientSettings | None = None):
        from dicomweb_client.api import DICOMwebClient

        self.root = normalise_root(root)
        self.settings = settings or ClientSettings()
        self.session = _session(self.root, credentials, self.settings)
        self.client = DICOMwebClient(
            url=self.root, session=self.session, timeout=(self.settings.connect_timeout, self.settings.read_timeout)
        )
        self.client.set_http_retry_params(retry=False)  # one retry policy: the session's (bounded, with backoff)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> DicomwebServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------ reading
    def fetch_series(self, study_uid: str, series_uid: str, folder: Path) -> list[Path]:
        """WADO-RS retrieve of the series as stored; one Part 10 file per instance in `folder`."""
        what = f"series {series_uid} of study {study_uid}"
        datasets = self._call(
            what, lambda: self.client.retrieve_series(study_uid, series_uid, media_types=ORIGINAL_TRANSFER_SYNTAX)
        )
        if not datasets:
            raise DicomwebError(f"{what} is not on the DICOMweb server {self.root} (no instances)")
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, dataset in enumerate(datasets):
            path = folder / f"{index:05d}.dcm"
            dataset.save_as(path, enforce_file_format=True)
            paths.append(path)
        return paths

    def find_instance(self, study_uid: str, sop_uid: str) -> dict[str, Any] | None:
        """QIDO-RS: the instance's attributes (DICOM JSON) if the study holds it."""
        found = self._call(
            f"instance {sop_uid}",
            lambda: self.client.search_for_instances(
                study_instance_uid=study_uid, search_filters={"SOPInstanceUID": sop_uid}
            ),
            missing_ok=True,
        )
        return found[0] if found else None

    def read(self, path: str, accept: str, params: dict[str, str] | None = None) -> requests.Response:
        """A GET of a resource under this root (the viewer's read-only proxy): the response with any status;
        connection failures and timeouts are DicomwebErrors like every other exchange's. QIDO-RS wildcards stay
        literal: Orthanc (1.10) does not match a percent-encoded `*`."""
        query = f"?{urlencode(params, quote_via=quote, safe='*')}" if params else ""
        return self._call(
            f"reading {path}",
            lambda: self.session.get(f"{self.root}/{path}{query}", headers={"Accept": accept}),
        )

    # ------------------------------------------------------------------------------------------------ storing
    def store_instance(self, dataset: Dataset) -> StoredInstance:
        """STOW-RS of one complete instance into its own study (nothing when the server holds it already)."""
        study_uid, series_uid, sop_uid = (
            str(dataset.StudyInstanceUID),
            str(dataset.SeriesInstanceUID),
            str(dataset.SOPInstanceUID),
        )
        if self.find_instance(study_uid, sop_uid) is not None:
            return StoredInstance(study_uid, series_uid, sop_uid, already_present=True)
        what = f"storing SEG {sop_uid}"
        response = self._call(what, lambda: self.client.store_instances([dataset], study_instance_uid=study_uid))
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            reason = failed[0].get("FailureReason", "no reason given")
            raise DicomwebError(
                f"the DICOMweb server {self.root} rejected the SEG {sop_uid} (STOW-RS failure reason {reason})"
            )
        if self.find_instance(study_uid, sop_uid) is None:
            raise DicomwebError(
                f"the DICOMweb server {self.root} rejected the SEG {sop_uid}: STOW-RS reported no "
                "failure, but QIDO-RS does not list the instance afterwards (a filter or policy on "
                "the server refused it)"
            )
        return StoredInstance(study_uid, series_uid, sop_uid, already_present=False)

    # ------------------------------------------------------------------------------------------------ errors
    def _call(self, what: str, call: Callable[[], Any], missing_ok: bool = False) -> Any:
        try:
            return call()
        except requests.HTTPError as error:
            status = error.response.status_code if error.response is not None else 0
            if missing_ok and status in (204, 404):
                return []
            raise DicomwebError(self._http_reason(what, status)) from None
        except requests.exceptions.RetryError:
            raise DicomwebError(
                f"{what}: the DICOMweb server {self.root} kept failing ({self.settings.retries + 1} attempts)"
            ) from None
        except requests.ConnectTimeout:
            raise DicomwebError(
                f"{what}: the DICOMweb server {self.root} is unreachable (no connection within "
                f"{self.settings.connect_timeout:g} s, {self.settings.retries + 1} attempts)"
            ) from None
        except (requests.Timeout, requests.ConnectionError) as error:
            # urllib3 gives up on repeated read timeouts as a ConnectionError that says "Read timed out"
            if isinstance(error, requests.Timeout) or "read timed out" in str(error).lower():
                attempts = self.settings.retries + 1
                raise DicomwebError(
                    f"{what}: the DICOMweb server {self.root} did not answer within "
                    f"{self.settings.read_timeout:g} s ({attempts} attempts)"
                ) from None
            raise DicomwebError(
                f"{what}: the DICOMweb server {self.root} is unreachable (connection failed, "
                f"{self.settings.retries + 1} attempts)"
            ) from None
        except requests.RequestException as error:
            raise DicomwebError(
                f"{what}: request to the DICOMweb server {self.root} failed ({type(error).__name__})"
            ) from None

    def _http_reason(self, what: str, status: int) -> str:
        if status in (401, 403):
            return (
                f"{what}: the DICOMweb server {self.root} refused the credentials (HTTP {status}); check the "
                "service's --dicomweb-credentials for this server"
            )
        if status == 404:
            return f"{what} is not on the DICOMweb server {self.root} (HTTP 404)"
        if status in (400, 409, 415, 422) and what.startswith("storing"):
            return f"{what}: the DICOMweb server {self.root} rejected the SEG (HTTP {status})"
        return f"{what}: the DICOMweb server {self.root} answered HTTP {status}"


class ServerDirectory:
    """The site's DICOMweb servers: the roots that may be used (those with credentials, and those allowed without)
    and a DicomwebServer for one of them, with its credentials (if any)."""

    def __init__(
        self,
        credentials: dict[str, Credentials] | None = None,
        settings: ClientSettings | None = None,
        allow: tuple[str, ...] | list[str] = (),
    ):
        self.credentials = dict(credentials or {})
        self.settings = settings or ClientSettings()
        self.allowed = frozenset(self.credentials) | frozenset(normalise_root(root) for root in allow)

    def allowed_root(self, url: str) -> str:
        """The normalised root, if the site configured it; RootNotAllowed (naming the rule) if not."""
        root = normalise_root(url)
        if root not in self.allowed:
            raise RootNotAllowed(f"the DICOMweb root {root} is not allowed: {ALLOW_RULE}")
        return root

    def open(self, root: str) -> DicomwebServer:
        root = self.allowed_root(root)
        return DicomwebServer(root, self.credentials.get(root), self.settings)
