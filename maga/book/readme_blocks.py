"""The README states measured numbers only inside blocks rendered from records, so a figure a reader sees
there is the record's, not a copy typed once and left to go stale. Each block sits between markers
`<!-- NAME: start (python -m maga.book.readme_blocks) -->` and `<!-- NAME: end -->`;
`python -m maga.book.readme_blocks` rewrites every block, and tests/book checks they are current."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

from maga.book import baselines_text, disclosures
from maga_core.config import atomic_path
from maga_core.errors import MagaError

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
RESULTS = REPO_ROOT / "results"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}: start (python -m maga.book.readme_blocks) -->", f"<!-- {name}: end -->"


def _record(name: str) -> dict[str, Any]:
    path = RESULTS / name
    if not path.exists():
        raise MagaError("record missing: rerun the command results/README.md names for it", path)
    return json.loads(path.read_text())


def _counts(statuses: list[int]) -> str:
    return ", ".join(f"{s} x{statuses.count(s)}" if statuses.count(s) > 1 else str(s)
                     for s in sorted(set(statuses)))


def reliability_table(r: dict[str, Any] | None = None) -> str:
    """The fault suite's table from `results/reliability.json` (`maga bench reliability`)."""
    r = r if r is not None else _record("reliability.json")
    t = r["totals"]
    rows = []
    for cmd, k in r["kills"].items():
        rows.append((f"kill -9 `maga {cmd}`", f"{k['kills']} kills ({k['kills_mid_write']} mid-write) over "
                     f"{k['runs']} runs / {k['trials']} trials; outputs bit-equal up to max abs diff "
                     f"{k['max_abs_diff']:g}; {k['orphan_temporaries']} dot-temporaries left", k["lost"]))
    for key, what in (("tiles_damaged_in_header", "tile header"), ("tiles_damaged_in_data", "entropy data")):
        c = r["corrupt"][key]
        rows.append((f"damaged JPEG tiles ({what})", f"{c['reported_with_region']} of {c['slides']} slides reported "
                     f"with name and region; {c['good_slides_finished']} of 2 good slides finished",
                     2 - c["good_slides_finished"]))
    tr = r["corrupt"]["truncated_feature_files"]
    rows.append(("truncated feature HDF5", f"{tr['refused_one_line']} of {tr['tried']} cut points refused in one line",
                 tr["tried"] - tr["refused_one_line"]))
    f = r["fuzz"]
    outcomes = ", ".join(f"{n} {kind}" for kind, n in sorted(f["outcomes"].items()))
    rows.append(("fuzzed TIFF/SVS through open_slide", f"{f['cases']} cases under a {f['memory_cap_mb']} MB "
                 f"address-space cap: {outcomes}; unhandled: {'; '.join(f['findings']) or 'none'}", 0))
    d = r["disk"]
    rows.append(("full / read-only output folder", f"{sum(v['one_line'] for v in d.values())} of {len(d)} runs "
                 "stopped with one line naming the folder",
                 sum(v["temporaries_left"] + (not v["one_line"]) for v in d.values())))
    s = r["service"]
    rows.append((f"service: {s['clients']} clients x {s['uploads'] // s['clients']} uploads of the frozen section "
                 f"({s['slide_mb']} MB)", f"{s['answered_correctly']} of {s['uploads']} answered correctly, at most "
                 f"{s['max_concurrent_analyses']} analysis at a time; server RSS {s['server_rss_mb_idle']} -> "
                 f"{s['server_rss_mb_peak']} MB peak", s["files_left"] + s["uploads"] - s["answered_correctly"]))
    abuse = "; ".join(f"{k} -> {_counts(v)}" for k, v in s["abuse_statuses"].items())
    rows.append(("service: hostile clients", f"{abuse}; {s['files_left']} upload files left", 0))
    m = r.get("machine", {})
    lines = [f"One run on a {m.get('cpu_count', '?')}-core machine (load {m.get('load_avg_1m', '?')} at its start; "
             "`results/reliability.json`):", "", "| case | measured | lost or half-written |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines.append(f"| **total** | {t['kills_survived']} kills survived, {t['corrupt_inputs_tried']} corrupt inputs, "
                 f"{t['fuzz_cases_run']} fuzz cases, {t['concurrent_uploads_held']} concurrent uploads | "
                 f"**{t['lost_or_half_written']}** |")
    return "\n".join(lines)


def _datapath_row(where: str, d: dict[str, Any]) -> str:
    m = d.get("machine_at_start", {})
    return (f"| {where} | data path alone (`bench datapath`) | {d['tiles_per_s_20x']:,.0f} | {d['tiles_per_s_5x']:,.0f} | "
            f"{d['ratio_20x_over_5x']:.1f} | load {m.get('load_avg_1m', '?')} on {m.get('cpu_count', '?')} cores |")


def gpu_text() -> str:
    """What a GPU user should expect: every H200 run recorded under results/gpu_h200_run*/ (tiles/s per
    slide in steady state), next to the development machine's data path, and the steps that did not finish."""
    lines = ["| machine | what | 20x tiles/s | 5x tiles/s | 20x/5x slide time | notes |", "|---|---|---|---|---|---|"]
    runs = sorted(RESULTS.glob("gpu_h200_run*/"))
    for run in runs:
        name = f"H200 `{run.name}`"
        if (run / "bench_datapath.json").exists():
            lines.append(_datapath_row(name, _record(f"{run.name}/bench_datapath.json")))
        if (run / "bench_extract_lite0.json").exists():
            e = _record(f"{run.name}/bench_extract_lite0.json")
            x, b = e["encoders"]["efficientnet_lite0"], e["baseline"]
            bs = e["settings"]["batch_size"]
            lines.append(f"| {name} | efficientnet_lite0 {x['precision']}, batch {bs['20x']} / {bs['5x']} | "
                         f"{x['pipeline_tiles_per_s_20x']:,.0f} (network alone {x['model_only_tiles_per_s_20x']:,.0f}) | "
                         f"{x['pipeline_tiles_per_s_5x']:,.0f} (network alone {x['model_only_tiles_per_s_5x']:,.0f}) | "
                         f"{x['ratio_20x_over_5x']:.1f} | first slide {x['first_slide_seconds_20x']:.1f} s at 20x, apart; "
                         f"CLAM-style loop {b['tiles_per_s']:,.0f} tiles/s |")
    lines.append(_datapath_row("development machine", _record("bench_datapath.json")))
    unfinished = []
    for run in runs:
        status = run / "status.json"
        if status.exists():
            steps = {k: v for k, v in json.loads(status.read_text()).items() if isinstance(v, dict) and "rc" in v}
            unfinished += [f"`{k}` in `{run.name}` (exit {v['rc']} after {v['seconds']} s)" for k, v in steps.items()
                           if v["rc"] != 0]
    if unfinished:
        lines += ["", "Did not finish inside its time limit, so not measured: " + "; ".join(unfinished) + "."]
    return "\n".join(lines)


def cpu_targets_text() -> str:
    """Issue 20's targets on the development machine against `results/bench_datapath.json` and
    `results/bench_extract.json` (each record carries the targets it was judged by)."""
    d, e = _record("bench_datapath.json"), _record("bench_extract.json")
    lite, resnet = e["encoders"]["efficientnet_lite0"], e["encoders"]["resnet50_trunc"]
    dt, et = d["targets"], e["targets"]
    rss = max(d["peak_rss_mb"], *(x["peak_rss_mb"] for x in e["encoders"].values()))
    rows = [
        ("data path alone, 20x tiles/s", f">= {dt['tiles_per_s_20x']:,.0f}", f"{d['tiles_per_s_20x']:,.0f}",
         d["tiles_per_s_20x"] >= dt["tiles_per_s_20x"]),
        ("data path alone, 20x slide time / 5x slide time", f">= {dt['ratio_20x_over_5x']:g}",
         f"{d['ratio_20x_over_5x']:.1f}", d["ratio_20x_over_5x"] >= dt["ratio_20x_over_5x"]),
        ("efficientnet_lite0 pipeline / network alone, 20x", f">= {et['pipeline_efficiency']:g}",
         f"{lite['pipeline_efficiency']:.3f}", lite["pipeline_efficiency"] >= et["pipeline_efficiency"]),
        ("resnet50_trunc tiles/s / CLAM-style loop's", f">= {et['speedup_over_baseline']:g}",
         f"{resnet['speedup_over_baseline']:.2f}", resnet["speedup_over_baseline"] >= et["speedup_over_baseline"]),
        ("peak RSS of any timed run, MB", f"<= {et['peak_rss_mb']:,.0f}", f"{rss:,.0f}", rss <= et["peak_rss_mb"]),
    ]
    load = max(d["machine_at_start"]["load_avg_1m"], e["machine_at_start"]["load_avg_1m"])
    hi, lo = (d["results"]["ours"][m]["steady"] for m in ("20x", "5x"))
    return "\n".join(["| target (8192 px generated slide) | wanted | measured | met |", "|---|---|---|---|",
                      *(f"| {a} | {b} | {c} | {'yes' if ok else '**no**'} |" for a, b, c, ok in rows),
                      "", f"{d['machine_at_start']['cpu_count']} cores, load at most {load:.2f} when the runs began. "
                      f"CPU time of the data path per slide (every thread): 20x {1e3 * hi['cpu_seconds_per_slide']:.0f} ms, "
                      f"5x {1e3 * lo['cpu_seconds_per_slide']:.0f} ms, a ratio of {d['cpu_ratio_20x_over_5x']:.1f}, with "
                      f"{hi['cores_busy']:.2f} and {lo['cores_busy']:.2f} cores busy: the slide-time ratio rises above "
                      "the CPU-time ratio only as far as the 5x slide keeps the cores busier than the 20x one."])


BLOCKS: dict[str, Callable[[], str]] = {
    "disclosures": lambda: disclosures.markdown(None),
    "reliability": reliability_table,
    "maga-baselines": lambda: baselines_text.readme_block(RESULTS),
    "gpu": gpu_text,
    "cpu-targets": cpu_targets_text,
}


def block(name: str) -> str:
    start, end = markers(name)
    return f"{start}\n{BLOCKS[name]()}\n{end}"


def blocks_in(text: str) -> list[str]:
    return [name for name in BLOCKS if markers(name)[0] in text]


def strip_blocks(text: str) -> str:
    """The text without its rendered blocks (what a reader typed, for the prose-number test)."""
    for name in BLOCKS:
        start, end = markers(name)
        while start in text and end in text:
            head, rest = text.split(start, 1)
            text = head + rest.split(end, 1)[1]
    return text


def sync(readme: Path = README) -> list[str]:
    """Rewrite every block of `readme` from its record; the names of the blocks that changed."""
    text = new = Path(readme).read_text()
    changed = []
    for name in blocks_in(text):
        start, end = markers(name)
        if end not in new:
            raise MagaError(f"block {name} has no end marker", readme)
        head, rest = new.split(start, 1)
        rendered = head + block(name) + rest.split(end, 1)[1]
        if rendered != new:
            changed.append(name)
        new = rendered
    if new != text:
        with atomic_path(readme) as tmp:
            tmp.write_text(new)
    return changed


if __name__ == "__main__":
    changed = sync()
    print("README.md: " + (f"rewrote {', '.join(changed)}" if changed else "every block current"))
    sys.exit(0)
