"""The error a study's own input raises: reported for that study alone, never retried."""

from __future__ import annotations


class StudyError(ValueError):
    """A problem with one study's input: reported for that study alone, never retried."""
