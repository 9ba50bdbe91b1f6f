"""The hospital side: write the slide at the chosen magnification, upload it through a bandwidth cap,
and report transfer, server and total times."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import httpx

from maga_core.errors import MagaError
from maga_core.slides import open_slide
from maga.slide_tools.writer import write_at_magnification

CHUNK = 64 * 1024


class TokenBucket:
    """Byte-rate limiter: a chunk passes once its bytes are paid for at `rate` bytes per second.

    Taking more than the bucket holds leaves a debt that is slept off before the chunk passes; the next
    take credits the time that really passed, so when a sleep overran, the credit earned is kept, not
    lost (up to `capacity`, which bounds the burst after an idle spell): the long-run rate stays at
    `rate` however coarse the scheduler is. `clock` and `sleep` are injectable so the accounting can be
    checked on virtual time, independent of the machine's load."""

    def __init__(self, rate_bytes_per_s: float, capacity: int = 4 * CHUNK,
                 clock: Callable[[], float] = time.perf_counter, sleep: Callable[[float], None] = time.sleep):
        if rate_bytes_per_s <= 0:
            raise MagaError(f"bandwidth must be positive, got {rate_bytes_per_s} bytes/s")
        self.rate, self.capacity, self.clock, self.sleep = rate_bytes_per_s, capacity, clock, sleep
        self.tokens, self.stamp = 0.0, clock()  # start empty: no initial burst

    def take(self, n: int) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate) - n
        self.stamp = now
        if self.tokens < 0:
            self.sleep(-self.tokens / self.rate)


@dataclass
class SendReport:
    slide: str
    magnification: float
    bytes: int
    pixels: int
    write_s: float
    transfer_s: float
    total_s: float
    server: dict = field(default_factory=dict)


def _stream(path: Path, bucket: TokenBucket | None, done: list[float], clock: Callable[[], float]) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            if bucket is not None:
                bucket.take(len(chunk))
            yield chunk
    done.append(clock())


def upload(path: str | Path, server: str, token: str, magnification: float,
           bandwidth_mbps: float | None = None, timeout_s: float = 600.0,
           clock: Callable[[], float] = time.perf_counter,
           sleep: Callable[[float], None] = time.sleep) -> tuple[dict, float]:
    """POST a file to /v1/diagnose; returns (server JSON, seconds until the last byte left), both the
    pacing and the seconds on `clock` / `sleep` (a test passes virtual ones)."""
    path = Path(path)
    bucket = TokenBucket(bandwidth_mbps * 1e6 / 8, clock=clock, sleep=sleep) if bandwidth_mbps else None
    done: list[float] = []
    headers = {"Authorization": f"Bearer {token}", "X-Filename": path.name,
               "Content-Length": str(path.stat().st_size), "Content-Type": "application/octet-stream"}
    t0 = clock()
    with httpx.Client(timeout=timeout_s) as client:
        resp = client.post(f"{server.rstrip('/')}/v1/diagnose", params={"magnification": magnification},
                           content=_stream(path, bucket, done, clock), headers=headers)
    transfer_s = (done[0] if done else clock()) - t0
    if resp.status_code != 200:
        detail = resp.json().get("detail", resp.text) if resp.headers.get("content-type", "").startswith(
            "application/json") else resp.text
        raise MagaError(f"server answered {resp.status_code}: {detail}", path)
    return resp.json(), transfer_s


def send(slide: str | Path, server: str, token: str, magnification: float,
         bandwidth_mbps: float | None = None, mpp: float | None = None) -> SendReport:
    """Write `slide` at `magnification` (its own pyramidal TIFF), upload it, and time each step."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="maga-send-") as tmp:
        reader = open_slide(slide, mpp=mpp)
        try:
            written = write_at_magnification(reader, magnification, Path(tmp) / f"{Path(slide).stem}_{magnification:g}x.tif")
        finally:
            reader.close()
        write_s = time.perf_counter() - t0
        result, transfer_s = upload(written["path"], server, token, magnification, bandwidth_mbps)
    return SendReport(slide=str(slide), magnification=magnification, bytes=int(written["bytes"]),
                      pixels=int(written["pixels"]), write_s=write_s, transfer_s=transfer_s,
                      total_s=time.perf_counter() - t0, server=result)
