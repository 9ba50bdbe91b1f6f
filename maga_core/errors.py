"""One exception type for expected failures, so the CLI can print one line and exit non-zero."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path


class MagaError(Exception):
    """An expected, user-facing failure. Message form: '<file>: <cause>' where a file is involved."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        super().__init__(f"{path}: {message}" if path is not None else message)


class OutputError(MagaError):
    """The output folder is full or read-only: a batch job stops instead of skipping the item."""


# Errors of the output side: the disk or quota is full, a file would pass RLIMIT_FSIZE, or the folder is
# read-only. Retrying the next item cannot help, so batch jobs stop on them instead of skipping.
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def output_error(exc: BaseException, folder: str | Path | None = None) -> OutputError | None:
    """A one-line MagaError naming the output folder when `exc` is a full-disk or read-only failure
    (OSError from Python, or h5py's, which carries the errno only in its message). With `folder`, only
    errors on files inside it count, and it is named when the error names no file; else None."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, (OSError, MagaError)):  # h5py wraps a failed write
        seen = seen.__cause__ or seen.__context__
    if not isinstance(seen, OSError):
        return None
    exc, name = seen, seen.filename
    code, text = exc.errno, str(exc)
    if code is None:
        found = re.search(r"errno = (\d+)", text)
        code = int(found.group(1)) if found else None
        named = re.search(r"name = '([^']+)'", text)
        name = named.group(1) if named else None
    if code not in _OUTPUT_ERRNOS:
        return None
    if name and folder and not Path(name).resolve().is_relative_to(Path(folder).resolve()):
        return None  # an input file we may not read: that item fails, the batch goes on
    folder = Path(name).parent if name else folder
    return OutputError(f"cannot write here: {os.strerror(code)}; stopped, finished outputs are kept", folder)
