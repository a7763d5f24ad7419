"""Find the studies in a folder."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from producer.formats.npz import is_challenge_npz


@dataclass(frozen=True)
class StudySource:
    name: str
    path: Path
    kind: str  # "npz" (challenge format)


def find_studies(folder: Path) -> list[StudySource]:
    """Challenge npz files (2DBox_*/3DBox_*) in folder, sorted by name; else those in its `imgs/` subfolder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    found = [StudySource(p.stem, p, "npz") for p in sorted(folder.glob("*.npz")) if is_challenge_npz(p)]
    if not found and (folder / "imgs").is_dir():
        return find_studies(folder / "imgs")
    return found
