"""Resource limits for a child process (set between fork and exec): a file-size cap that behaves like a
full disk (EFBIG instead of SIGXFSZ) and an address-space cap that bounds memory."""

from __future__ import annotations

import resource
import signal
from typing import Callable


def preexec(fsize: int | None = None, address_space: int | None = None) -> Callable[[], None]:
    def apply() -> None:
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        if address_space is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    return apply
