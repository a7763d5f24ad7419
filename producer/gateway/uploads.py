"""What jobs and sessions share of HTTP files: uploads saved private (0600) under a size bound, and the media
types of the results they offer."""

from __future__ import annotations

import os
import re
from pathlib import Path

from fastapi import HTTPException
from starlette.datastructures import UploadFile

from producer.formats.dicom_outputs import DOWNLOAD_MEDIA_TYPES

MEDIA_TYPES = DOWNLOAD_MEDIA_TYPES  # by result format: producer.formats.dicom_outputs's table
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def files_part(description: str) -> dict:
    """OpenAPI: the multipart `files` part of an upload (one or more files)."""
    return {"type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"}, "description": description}


def _upload_name(index: int, filename: str | None, taken: set[str]) -> str:
    name = SAFE_NAME.sub("_", Path(filename or "").name).lstrip(".")
    if not name or name in taken or name == "prompts.json":
        name = f"upload{index:05d}" + "".join(Path(filename or "").suffixes[-2:]).replace("/", "")
    taken.add(name)
    return name


async def save_uploads(folder: Path, files: list[UploadFile], limit: int) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    taken: set[str] = set()
    total = 0
    for index, upload in enumerate(files):
        path = folder / _upload_name(index, upload.filename, taken)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
            while chunk := await upload.read(1 << 20):
                total += len(chunk)
                if total > limit:
                    raise HTTPException(413, f"the upload is larger than {limit >> 20} MB (--max-upload-mb)")
                handle.write(chunk)
