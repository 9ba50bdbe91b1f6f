"""Mutated slides through `open_slide` in a worker process held to a memory cap, with a per-case time
limit: every case must end in a result or a one-line MagaError. A case that raises anything else, hangs,
crashes the process or runs out of memory is a finding. The worker is restarted after a hang or a crash."""

from __future__ import annotations

import json
import math
import os
import selectors
import struct
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maga_core.errors import MagaError
from maga_core.slides import open_slide
from maga.reliability.kills import REPO, child_env
from maga.reliability.limits import preexec

MEMORY_CAP = 3 * 1024**3  # address space of the worker (torch is not loaded there)
# Tags a mutation rewrites: image width/length, tile width/length, x/y resolution, resolution unit,
# tile offsets / byte counts, and the ImageDescription's first bytes (Aperio's MPP lives there).
SIZE_TAGS = (256, 257, 322, 323)
ABSURD = (0, 1, 3, 2**15 + 1, 2**31 - 1, 2**32 - 1)
KINDS = ("flip_ifd", "absurd_size", "resolution", "offsets", "truncate", "mpp_override", "description")


def _worker_main() -> None:
    """One case per stdin line ({"path", "mpp"}), one JSON answer per stdout line."""
    import resource

    for line in sys.stdin:
        case = json.loads(line)
        try:
            with open_slide(case["path"], mpp=case["mpp"]) as r:
                r.read_region((0, 0), 0, (64, 64))
                r.read_region((0, 0), r.level_count - 1, (32, 32))
                thumb = r.thumbnail(128)
                info = r.info()
            answer = {"outcome": "ok", "mpp": info["mpp"], "thumb": list(thumb.shape)}
            if not (math.isfinite(info["mpp"]) and info["mpp"] > 0):
                answer = {"outcome": "bad_result", "detail": f"mpp {info['mpp']}"}
        except MagaError as exc:
            text = str(exc)
            answer = {"outcome": "maga" if "\n" not in text else "multiline", "detail": text}
        except MemoryError:
            answer = {"outcome": "memory", "detail": "MemoryError under the cap"}
        except Exception as exc:  # noqa: BLE001 - exactly what the fuzzer looks for
            answer = {"outcome": "exception", "detail": f"{type(exc).__name__}: {exc}"[:500]}
        answer["rlimit_as"] = resource.getrlimit(resource.RLIMIT_AS)[0]
        answer["peak_mb"] = peak_rss_mb(os.getpid())
        print(json.dumps(answer), flush=True)


class Worker:
    """The worker process; `run(path, mpp)` gives its answer, or hang / crash."""

    def __init__(self, memory_cap: int = MEMORY_CAP, timeout_s: float = 60.0):
        self.memory_cap, self.timeout_s, self.proc = memory_cap, timeout_s, None

    def _start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", "from maga.reliability.fuzz import _worker_main; "
                                      "_worker_main()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, cwd=REPO, env=child_env(),
                                     preexec_fn=preexec(address_space=self.memory_cap))

    def run(self, path: Path, mpp: float | None = None) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.proc.stdin.write(json.dumps({"path": str(path), "mpp": mpp}) + "\n")
        self.proc.stdin.flush()
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        ready = sel.select(self.timeout_s)
        sel.close()
        line = self.proc.stdout.readline() if ready else ""
        if line:
            return json.loads(line)
        hung = self.proc.poll() is None
        self.close()
        return {"outcome": "hang" if hung else "crash",
                "detail": f"no answer in {self.timeout_s:g} s" if hung else "worker died"}

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None


def _ifd_entries(data: bytes) -> tuple[str, list[tuple[int, int, int, int]]]:
    """(byte order, [(entry offset, tag, type, count)]) of every classic-TIFF directory."""
    order = "<" if data[:2] == b"II" else ">"
    if data[2:4] not in (b"*\x00", b"\x00*"):
        return order, []
    entries, offset, seen = [], struct.unpack(order + "I", data[4:8])[0], set()
    while 0 < offset < len(data) - 2 and offset not in seen:
        seen.add(offset)
        n = struct.unpack(order + "H", data[offset:offset + 2])[0]
        for k in range(n):
            at = offset + 2 + 12 * k
            if at + 12 > len(data):
                break
            tag, typ, count = struct.unpack(order + "HHI", data[at:at + 8])
            entries.append((at, tag, typ, count))
        nxt = offset + 2 + 12 * n
        offset = struct.unpack(order + "I", data[nxt:nxt + 4])[0] if nxt + 4 <= len(data) else 0
    return order, entries


def _set_value(data: bytearray, order: str, entry: tuple[int, int, int, int], value: int) -> None:
    at, _, typ, count = entry
    if typ == 3 and count <= 2:  # SHORT inline
        data[at + 8:at + 10] = struct.pack(order + "H", value & 0xFFFF)
    elif typ in (4, 13) and count == 1:  # LONG inline
        data[at + 8:at + 12] = struct.pack(order + "I", value & 0xFFFFFFFF)
    else:  # the value (or the pointer to the values) itself
        data[at + 8:at + 12] = struct.pack(order + "I", value & 0xFFFFFFFF)


def mutate(base: bytes, kind: str, seed: int) -> tuple[bytes, float | None]:
    """A mutated copy of a TIFF/SVS and the MPP override to open it with (None: the file's own)."""
    rng = np.random.default_rng(seed)
    data = bytearray(base)
    order, entries = _ifd_entries(base)
    pick = (lambda tags: [e for e in entries if e[1] in tags])
    mpp = None
    if kind == "flip_ifd" and entries:
        for _ in range(int(rng.integers(1, 8))):
            at = entries[int(rng.integers(len(entries)))][0] + int(rng.integers(12))
            data[at] ^= int(rng.integers(1, 256))
    elif kind == "absurd_size" and pick(SIZE_TAGS):
        for e in rng.permutation(pick(SIZE_TAGS))[: int(rng.integers(1, 4))]:
            _set_value(data, order, tuple(int(v) for v in e), int(rng.choice(ABSURD)))
    elif kind == "resolution" and pick((282, 283, 296)):
        for at, tag, typ, count in pick((282, 283, 296)):
            if tag == 296:
                _set_value(data, order, (at, tag, typ, count), int(rng.integers(0, 5)))
            else:
                ptr = struct.unpack(order + "I", base[at + 8:at + 12])[0]
                if ptr + 8 <= len(data):
                    num, den = (int(v) for v in rng.choice([0, 1, 2**32 - 1], 2))
                    data[ptr:ptr + 8] = struct.pack(order + "II", num, den)
    elif kind == "offsets" and pick((324, 325, 273, 279)):
        e = pick((324, 325, 273, 279))[int(rng.integers(len(pick((324, 325, 273, 279)))))]
        _set_value(data, order, e, int(rng.choice([0, len(base) - 1, len(base) * 2, 2**32 - 1])))
    elif kind == "description" and pick((270,)):
        at, _, _, count = pick((270,))[0]
        ptr = struct.unpack(order + "I", base[at + 8:at + 12])[0] if count > 4 else at + 8
        junk = rng.choice([b"MPP = nan|", b"MPP = -0.5|", b"MPP = 1e309|", b"Aperio |MPP = 0|", b"\xff\xfe\x00"])
        data[ptr:ptr + len(junk)] = junk[: max(0, min(len(junk), count))]
    elif kind == "truncate":
        data = data[: int(rng.integers(8, len(data)))]
    elif kind == "mpp_override":
        mpp = float(rng.choice([float("nan"), -0.5, 0.0, float("inf"), 1e-9, 1e9]))
    else:  # a kind this file has no tag for: random bytes in its first 4 KiB
        for at in rng.integers(0, min(4096, len(data)), 16):
            data[int(at)] ^= 0xFF
    return bytes(data), mpp


@dataclass
class FuzzStats:
    cases: int = 0
    outcomes: Counter = field(default_factory=Counter)
    findings: list[str] = field(default_factory=list)  # cases that did not end in a result or a MagaError

    @property
    def failures(self) -> int:
        return self.cases - self.outcomes["ok"] - self.outcomes["maga"]


def fuzz_case(worker: Worker, base: Path, kind: str, seed: int, folder: Path, stats: FuzzStats) -> dict:
    data, mpp = mutate(base.read_bytes(), kind, seed)
    path = folder / f"{base.stem}_{kind}_{seed}{base.suffix}"
    path.write_bytes(data)
    answer = worker.run(path, mpp)
    stats.cases += 1
    stats.outcomes[answer["outcome"]] += 1
    if answer["outcome"] not in ("ok", "maga"):
        stats.findings.append(f"{base.name} {kind} seed {seed}: {answer['outcome']}: {answer.get('detail', '')}")
    else:
        path.unlink()
    return answer


def fuzz(bases: list[Path], n_cases: int, seed: int, folder: Path, worker: Worker | None = None) -> FuzzStats:
    """`n_cases` seeded mutations spread over `bases` and `KINDS` (the benchmark's long run)."""
    folder.mkdir(parents=True, exist_ok=True)
    worker = worker or Worker()
    stats = FuzzStats()
    rng = np.random.default_rng(seed)
    try:
        for i in range(n_cases):
            fuzz_case(worker, bases[i % len(bases)], KINDS[int(rng.integers(len(KINDS)))],
                      int(rng.integers(2**31)), folder, stats)
    finally:
        worker.close()
    return stats


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a live process (Linux), in MB; 0 where /proc is absent."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


__all__ = ["KINDS", "FuzzStats", "Worker", "fuzz", "fuzz_case", "mutate"]
