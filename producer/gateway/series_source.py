"""`producer submit --dicomweb URL --study UID --series UID --prompts FILE [--stow]`: a PACS series as a folder.

The series is retrieved (WADO-RS, as stored) into a temporary folder with the prompts beside it as `prompts.json`,
so the usual `producer submit` path (embedded or fleet) runs on it unchanged; with `--stow` each SEG it wrote is
then stored back into the source study (STOW-RS, skipped when the PACS holds it already).
"""

from __future__ import annotations

import json
from pathlib import Path

from pydicom import dcmread

from producer.formats.sidecar import DICOM_SIDECAR, parse_entry
from producer.gateway.dicomweb import ServerDirectory, StoredInstance, load_credentials
from producer.outcome import StudyOutcome
from producer.outputs import SUFFIXES


def servers(credentials_file: Path | None, allow: tuple[str, ...] = ()) -> ServerDirectory:
    """The servers `producer submit --dicomweb` may use: as for the gateway, the credentials file's roots and the
    `--dicomweb-allow` ones."""
    return ServerDirectory(load_credentials(credentials_file) if credentials_file else {}, allow=allow)


def fetch_series_folder(
    directory: ServerDirectory, root: str, study: str, series: str, prompts_file: Path, folder: Path
) -> Path:
    """The series' files and its prompts.json in `folder` (checked before anything is fetched)."""
    prompts = json.loads(Path(prompts_file).read_text(encoding="utf-8"))
    parse_entry(prompts, str(prompts_file))
    directory.allowed_root(root)
    with directory.open(root) as server:
        server.fetch_series(study, series, folder)
    (folder / DICOM_SIDECAR).write_text(json.dumps(prompts), encoding="utf-8")
    return folder


def stow_results(
    directory: ServerDirectory, root: str, out_dir: Path, outcomes: list[StudyOutcome]
) -> list[StoredInstance]:
    stored = []
    with directory.open(root) as server:
        for outcome in outcomes:
            path = Path(out_dir) / f"{outcome.name}{SUFFIXES['dicom']}"
            if outcome.ok and path.is_file():
                stored.append(server.store_instance(dcmread(path)))
    return stored
