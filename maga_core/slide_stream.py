"""The slide data path of `maga extract`: uint8 patch batches read by a producer thread (tiles decoded
on `slides.TileReader`'s threads) while the caller's thread runs the network.

Only uint8 crosses to the device (a quarter of float32's bytes, pinned for an asynchronous copy on
CUDA); normalisation (and an upsampling student's resize) runs there, inside the model's own
`preprocess`. On CUDA every batch has the same shape (the last one is padded, its padding dropped),
so cuDNN's autotuned kernels (`cudnn.benchmark`) are chosen once per process, not per slide; features
come back through a pinned buffer one batch late, so the GPU never waits for the HDF5 write.
`StageTimes` says where the wall time went (`maga bench datapath`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import torch

from maga_core.slides.patch_batch import read_patches

STAGES = ("open", "tissue_grid", "read_decode", "cut_resize", "preprocess", "transfer", "network", "write")


class StageTimes:
    """Seconds per stage, added from any thread. Stages of the producer thread (read, decode, cut)
    overlap the consumer's (preprocess, transfer, network, write): their sum can exceed the wall time."""

    def __init__(self) -> None:
        self.seconds = {s: 0.0 for s in STAGES}
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @contextmanager
    def time(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t0)

    def as_dict(self) -> dict[str, float]:
        return dict(self.seconds)


def _batches(reader, coords: np.ndarray, mag: float, patch_px: int, bs: int, pin: bool, stages: StageTimes,
             prefetch: int = 3) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(indices, uint8 [B,px,px,3] tensor) per batch, read ahead by a producer thread."""
    out: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for start in range(0, len(coords), bs):
                if stop.is_set():
                    return
                idx = np.arange(start, min(start + bs, len(coords)))
                decoded0 = getattr(reader, "decode_seconds", 0.0)
                t0 = time.perf_counter()
                arr = read_patches(reader, coords[idx], mag, patch_px)
                took, decoded = time.perf_counter() - t0, getattr(reader, "decode_seconds", 0.0) - decoded0
                stages.add("read_decode", decoded if decoded else took)
                stages.add("cut_resize", took - decoded if decoded else 0.0)
                x = torch.from_numpy(arr)
                if pin:
                    with stages.time("transfer"):
                        x = x.pin_memory()
                out.put((idx, x))
            out.put(done)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            out.put(exc)

    thread = threading.Thread(target=produce, name="maga-read", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                out.get_nowait()
            except queue.Empty:
                thread.join(0.05)


READ_PIXELS = 32 * 256 * 256  # pixels the reader thread reads per call: the union of a read's tiles is
# decoded once, so reads much smaller than a tile row decode shared tiles twice (5x on CPU: 64-patch reads
# took 0.08 s per slide, one 512-patch read 0.06 s)


def stream_patches(reader, coords: np.ndarray, model: Any, put: Callable[[np.ndarray, np.ndarray], None],
                   batch_size: int, stages: StageTimes | None = None,
                   progress: Callable[[int], None] | None = None) -> None:
    """Features of every patch (model.mag, model.patch_px) at `coords`, handed to `put(indices, rows)`:
    read `READ_PIXELS` at a time (or `batch_size` patches if more), embedded `batch_size` at a time,
    written once per read."""
    stages = stages or StageTimes()
    rt = model.runtime
    pending: deque = deque()
    read_size = max(batch_size, READ_PIXELS // model.patch_px ** 2)

    def flush(keep: int) -> None:
        while len(pending) > keep:
            idx, rows, event = pending.popleft()
            if event is not None:
                event.synchronize()
            with stages.time("write"):
                put(idx, rows.numpy()[: len(idx)])
            if progress:
                progress(len(idx))

    for idx, chunk in _batches(reader, coords, model.mag, model.patch_px, read_size, rt.pin_memory, stages):
        feats = []
        for start in range(0, len(idx), batch_size):
            x = chunk[start:start + batch_size]
            n = len(x)
            if rt.cuda and n < batch_size:  # one shape for every batch: no re-tuning, no new kernels
                x = torch.cat([x, x[-1:].expand(batch_size - n, *x.shape[1:])])
            with stages.time("transfer"):
                x = rt.to(x)
            with stages.time("preprocess"):
                x = model.preprocess(x)
            with stages.time("network"):
                feats.append(model(x)[:n])
        feats = feats[0] if len(feats) == 1 else torch.cat(feats)
        with stages.time("transfer"):
            if rt.cuda:
                host = torch.empty(feats.shape, dtype=feats.dtype, pin_memory=True)
                host.copy_(feats, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                pending.append((idx, host, event))
            else:
                pending.append((idx, feats, None))
        flush(keep=1 if rt.cuda else 0)
    flush(keep=0)
