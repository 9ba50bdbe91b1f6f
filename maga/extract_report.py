"""What a `maga extract` batch reports: per rank, the inputs extracted, skipped (already done: resume)
and failed, each failure as one line naming its file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maga_core.errors import MagaError


@dataclass
class BatchReport:
    rank: int
    world_size: int
    done: list[Any] = field(default_factory=list)  # maga.extract.SlideResult per extracted input
    skipped: list[str] = field(default_factory=list)  # outputs already there (resume)
    failed: dict[str, str] = field(default_factory=dict)  # input -> one-line cause

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        head = (f"extracted {len(self.done)}, skipped {len(self.skipped)} already done, "
                f"failed {len(self.failed)}" + (f" (rank {self.rank}/{self.world_size})" if self.world_size > 1 else ""))
        return "\n".join([head] + [f"  failed: {cause}" for cause in self.failed.values()])


def one_line_cause(exc: BaseException, src: Path) -> str:
    """'<file>: <cause>' on one line. Errors raised in a DataLoader worker arrive re-wrapped with the
    worker's traceback as their message; its last line holds the original error."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught "):
        last = lines[-1]
        name = type(exc).__module__ + "." + type(exc).__name__ + ": "
        lines = [last[len(name):] if last.startswith(name) else last]
    text = lines[0] if lines else type(exc).__name__
    if isinstance(exc, MagaError) and str(src) in text:
        return text
    return f"{src}: {type(exc).__name__}: {text}"


def report_dict(report: BatchReport) -> dict[str, Any]:
    return {"rank": report.rank, "world_size": report.world_size, "done": report.done,
            "skipped": report.skipped, "failed": report.failed}
