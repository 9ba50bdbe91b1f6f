"""`python -m maga.reliability.readonly FOLDER maga-args...`: the `maga` command with FOLDER on a
read-only file system, simulated in the process: creating, opening for writing or renaming anything
under it fails with EROFS. (The tests run as root, to whom a folder's permission bits do not apply.)"""

from __future__ import annotations

import builtins
import errno
import os
import sys
from pathlib import Path

from maga.reliability.kills import CLI_MODULE


def _refuse_under(folder: Path) -> None:
    root = str(folder.resolve())

    def inside(path) -> bool:
        try:
            return os.path.abspath(os.fspath(path)).startswith(root)
        except TypeError:  # a file descriptor
            return False

    def deny(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    real_open, real_os_open, real_mkdir, real_replace = builtins.open, os.open, os.mkdir, os.replace

    def open_(file, mode="r", *a, **kw):
        if inside(file) and any(c in mode for c in "wax+"):
            deny(file)
        return real_open(file, mode, *a, **kw)

    def os_open(path, flags, *a, **kw):
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            deny(path)
        return real_os_open(path, flags, *a, **kw)

    def mkdir(path, *a, **kw):
        if inside(path) and not os.path.isdir(path):
            deny(path)
        return real_mkdir(path, *a, **kw)

    def replace(src, dst, *a, **kw):
        if inside(dst):
            deny(dst)
        return real_replace(src, dst, *a, **kw)

    builtins.open, os.open, os.mkdir, os.replace = open_, os_open, mkdir, replace


def main() -> None:
    _refuse_under(Path(sys.argv[1]))
    sys.argv = ["maga", *sys.argv[2:]]
    cli = __import__(CLI_MODULE, fromlist=["main"])
    sys.exit(cli.main())


if __name__ == "__main__":
    main()
