"""One exception type for expected failures, so the CLI can print one line and exit non-zero."""

from __future__ import annotations

from pathlib import Path


class MagaError(Exception):
    """An expected, user-facing failure. Message form: '<file>: <cause>' where a file is involved."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        super().__init__(f"{path}: {message}" if path is not None else message)
