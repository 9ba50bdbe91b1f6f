"""SIGKILL a real `maga` process at seeded random times, rerun it until it finishes by itself, and compare
what it leaves with an uninterrupted run. After every kill, each output that looks finished (a visible
file, not a dot-temporary) must already equal the uninterrupted run's: a partial file taken for a
finished one shows up there as a mismatch."""

from __future__ import annotations

import importlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# The command's module: one line to change when the CLI moves.
CLI_MODULE = "maga.cli"
REPO = Path(__file__).resolve().parents[2]

# compare(out, final) -> one line per problem: an output that exists but differs from the reference (or,
# when final, one that is missing) and the largest absolute difference seen.
Compare = Callable[[Path, bool], "tuple[list[str], float]"]


# What each child command runs (its `run` imports it lazily). `maga_argv` imports it here too: a record made
# from child processes then lists that code in its provenance, since a child's modules are not this process's.
CHILD_CODE = {"extract": ("maga.extract_job",), "align": ("maga_core.align.train",),
              "mil": ("maga_core.mil.cv", "maga.cohorts"), "cohort": ("maga.cohort_pipeline",)}


def maga_argv(*args: str) -> list[str]:
    """argv of a `maga` child process (see CHILD_CODE)."""
    for name in CHILD_CODE.get(args[0], ()):
        importlib.import_module(name)
    return [sys.executable, "-m", CLI_MODULE, *args]


def child_env(**extra: str) -> dict[str, str]:
    """This checkout first on the path; one thread per process (deterministic, and fair to a shared box)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.update(extra)
    return env


def temporaries(folder: Path) -> list[Path]:
    """Files that atomic writers have not renamed into place yet (`.name.XXXX.tmp`)."""
    return sorted(folder.rglob(".*.tmp")) if folder.exists() else []


@dataclass
class KillStats:
    command: str
    kills: int = 0
    kills_mid_write: int = 0  # a temporary was open in the output folder at the kill
    runs: int = 0
    trials: int = 0  # fresh output folders, each killed until a run finished by itself
    write_span_s: float = 0.0  # how long the uninterrupted run went on writing (the kills' window)
    partial_taken: int = 0  # outputs present after a kill that differed from the reference (must be 0)
    final_mismatches: int = 0  # problems of the finished trials' outputs (must be 0)
    failed_runs: int = 0  # runs that exited non-zero by themselves (must be 0)
    max_abs_diff: float = 0.0
    orphan_temporaries: int = 0  # dot-temporaries left by killed writers (ignored by every reader)
    problems: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.partial_taken + self.final_mismatches + self.failed_runs


def run_once(argv: list[str], env: dict[str, str], log: Path, timeout: float) -> tuple[int, float]:
    t0 = time.perf_counter()
    with open(log, "ab") as fh:
        rc = subprocess.run(argv, stdout=fh, stderr=fh, env=env, timeout=timeout, cwd=REPO).returncode
    return rc, time.perf_counter() - t0


def first_write_s(argv: list[str], out: Path, pattern: str, env: dict[str, str], log: Path,
                  timeout: float = 900.0) -> tuple[int, float, float]:
    """Run to completion, polling `out` for a file matching `pattern` (temporaries included):
    (exit status, seconds until the first such file appeared, wall seconds)."""
    t0 = time.perf_counter()
    first = None
    with open(log, "ab") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=fh, env=env, cwd=REPO)
        while proc.poll() is None and time.perf_counter() - t0 < timeout:
            if first is None and _written(out, pattern):
                first = time.perf_counter() - t0
            time.sleep(0.01)
        rc = proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
    wall = time.perf_counter() - t0
    return rc, wall if first is None else first, wall


def _written(out: Path, pattern: str) -> bool:
    if out.is_dir():
        return any(out.rglob(pattern))
    return any(out.parent.glob(pattern))


def kill_at_first_write(name: str, argv: list[str], out: Path, pattern: str, compare: Compare,
                        env: dict[str, str] | None = None, timeout: float = 600.0) -> KillStats:
    """The worst moment, deterministically: SIGKILL as soon as an output matching `pattern` (temporaries
    included) is being written, check that nothing looks finished that is not, then rerun to the end."""
    env = env or child_env()
    stats = KillStats(name, trials=1)
    shutil.rmtree(out, ignore_errors=True)
    out.unlink(missing_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.parent / f"{out.stem}-run.log"
    with open(log, "ab") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=fh, env=env, cwd=REPO, start_new_session=True)
    t0 = time.perf_counter()
    while proc.poll() is None and not _written(out, pattern) and time.perf_counter() - t0 < timeout:
        time.sleep(0.002)
    stats.runs += 1
    if proc.poll() is None:
        _kill_and_check(proc, out, compare, stats, "after the kill")
    rc, _ = run_once(argv, env, log, timeout)
    stats.runs += 1
    if rc != 0:
        stats.failed_runs += 1
        stats.problems.append(f"rerun exited {rc} (see {log})")
        return stats
    problems, stats.max_abs_diff = compare(out, True)
    stats.final_mismatches += len(problems)
    stats.problems += problems
    return stats


def _kill_and_check(proc: subprocess.Popen, out: Path, compare: Compare, stats: KillStats, label: str) -> float:
    """SIGKILL the run's process group, then check that nothing partial is taken for finished."""
    stats.kills_mid_write += bool(temporaries(out if out.is_dir() else out.parent))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    stats.kills += 1
    problems, diff = compare(out, False)
    stats.partial_taken += len(problems)
    stats.problems += [f"{label}: {p}" for p in problems]
    return diff


def _snapshot(out: Path, pattern: str) -> dict[Path, int]:
    base = out if out.is_dir() else out.parent
    found = base.rglob(pattern) if out.is_dir() else base.glob(pattern)
    return {p: p.stat().st_mtime_ns for p in found if p.exists()}


def _wait_for_new_write(proc: subprocess.Popen, out: Path, pattern: str, before: dict[Path, int],
                        timeout: float) -> bool:
    """Poll until this run creates or rewrites a file matching `pattern`; False if it ended first."""
    t0 = time.perf_counter()
    while proc.poll() is None and time.perf_counter() - t0 < timeout:
        try:
            now = _snapshot(out, pattern)
        except FileNotFoundError:  # a temporary renamed while we looked
            continue
        if any(before.get(p) != m for p, m in now.items()):
            return True
        time.sleep(0.005)
    return proc.poll() is None


def kill_and_resume(name: str, argv: list[str], out: Path, compare: Compare, n_kills: int, seed: int,
                    write_span_s: float, pattern: str, env: dict[str, str] | None = None,
                    max_runs: int = 60, timeout: float = 600.0) -> KillStats:
    """Trials on a fresh `out`: start; once the run writes its first output (a file matching `pattern`
    created or rewritten), SIGKILL its process group after U(0, write_span_s) seconds (`write_span_s`:
    how long the uninterrupted run went on writing), check, rerun; a trial ends when a run finishes by
    itself. Timing from the run's own first write keeps the kills inside the work whatever the load."""
    env = env or child_env()
    rng = random.Random(seed)
    stats = KillStats(name, write_span_s=round(write_span_s, 2))
    log = out.parent / f"{out.stem}-run.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    while stats.kills < n_kills:
        shutil.rmtree(out, ignore_errors=True)
        out.unlink(missing_ok=True)
        stats.trials += 1
        for _ in range(max_runs):
            delay = rng.uniform(0.0, max(write_span_s, 0.2)) if stats.kills < n_kills else None
            stats.runs += 1
            before = _snapshot(out, pattern)
            with open(log, "ab") as fh:
                proc = subprocess.Popen(argv, stdout=fh, stderr=fh, env=env, cwd=REPO, start_new_session=True)
            if delay is not None and _wait_for_new_write(proc, out, pattern, before, timeout):
                try:
                    proc.wait(timeout=delay)
                except subprocess.TimeoutExpired:
                    diff = _kill_and_check(proc, out, compare, stats, f"after kill {stats.kills + 1}")
                    stats.max_abs_diff = max(stats.max_abs_diff, diff)
                    continue
            rc = proc.wait(timeout=timeout)
            if rc != 0:
                stats.failed_runs += 1
                stats.problems.append(f"run {stats.runs} exited {rc} (see {log})")
                break
            problems, diff = compare(out, True)
            stats.final_mismatches += len(problems)
            stats.problems += [f"trial {stats.trials}: {p}" for p in problems]
            stats.max_abs_diff = max(stats.max_abs_diff, diff)
            stats.orphan_temporaries += len(temporaries(out if out.is_dir() else out.parent))
            break
        else:
            stats.problems.append(f"trial {stats.trials} did not finish in {max_runs} runs")
            stats.final_mismatches += 1
    return stats
