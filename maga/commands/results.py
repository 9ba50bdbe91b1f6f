"""`maga results`: the records under results/, with the commit and command that made each and whether
the code that made them has changed since (STALE); `maga results make` remakes them (`make results`).
The other actions are the steps of those makers: copy a run's record in, combine bench runs, write
chapter 09's table from a preset's runs."""

from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("results", help="list the records under results/ (commit, command, STALE) or remake them",
                       description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_list)
    acts = p.add_subparsers(dest="action", metavar="ACTION")
    m = acts.add_parser("make", help="remake records (all, or the named makers), with a progress bar")
    m.add_argument("names", nargs="*", help="makers to run (default: every one within --max-minutes)")
    m.add_argument("--max-minutes", type=float, default=None,
                   help="skip makers expected to take longer on the 2-core development machine")
    m.add_argument("--work", default="runs/records", help="scratch folder for bench work directories")
    m.add_argument("--dry-run", action="store_true", help="list what would run")
    m.set_defaults(func=_make)
    c = acts.add_parser("collect", help="copy a record (with its provenance) into results/")
    c.add_argument("src")
    c.add_argument("dest")
    c.set_defaults(func=lambda a: _copy(a.src, a.dest))
    cm = acts.add_parser("collect-mil", help="copy a preset's MIL evidence tables (chapter 04) into a folder")
    cm.add_argument("--preset", default="demo")
    cm.add_argument("dest")
    cm.set_defaults(func=_collect_mil)
    cb = acts.add_parser("combine", help="combine bench JSONs into {'runs': {name: bench JSON}}")
    cb.add_argument("out")
    cb.add_argument("parts", nargs="+", metavar="NAME=FILE")
    cb.set_defaults(func=_combine)
    s = acts.add_parser("summary", help="write chapter 09's paper-vs-ours table of a preset's runs as CSV")
    s.add_argument("--preset", default="demo")
    s.add_argument("out")
    s.set_defaults(func=_summary)


def _list(args) -> int:
    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga.results_index import maker_of, status, status_json

    rows = status()
    if args.json:
        print(json.dumps(status_json(rows), indent=2))
        return 0
    width = max((len(r.file) for r in rows), default=10)
    for r in rows:
        mark = "ok   " if not r.stale else "STALE"
        print(f"{mark} {r.file:<{width}}  {(r.commit or '-')[:10]:<10}  {r.state}")
        if r.command:
            print(f"      {'':<{width}}  {r.command}")
        if r.changed:
            print(f"      {'':<{width}}  changed: {', '.join(r.changed[:6])}{' ...' if len(r.changed) > 6 else ''}")
        if r.stale and r.maker:
            print(f"      {'':<{width}}  remake: maga results make {r.maker} (about {maker_of(r.file).minutes:g} min)")
    print(f"{sum(r.stale for r in rows)} of {len(rows)} records stale")
    return 0


def _make(args) -> int:
    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from tqdm.auto import tqdm
    from maga.results_index import chosen, make

    makers = chosen(args.names, args.max_minutes)
    if args.dry_run:
        for m in makers:
            print(f"{m.name:<28} ~{m.minutes:g} min  {', '.join(m.files)}")
        return 0
    failures = []
    with tqdm(makers, desc="records", unit="maker") as bar:
        for m in bar:
            failures += make([m], Path(args.work).resolve(), progress=bar.set_postfix_str)
    for name, err in failures:
        print(f"maga results make: {name} failed: {err}")
    return 1 if failures else 0


def _copy(src: str, dest: str) -> int:
    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga.results_index import copy_record

    print(copy_record(Path(src), Path(dest)))
    return 0


def _collect_mil(args) -> int:
    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga import presets
    from maga.experiments.mil import ExperimentConfig, default_root
    from maga.results_index import copy_record

    P = presets.resolve("04_mil_cross_validation", args.preset)
    root = default_root(ExperimentConfig.from_dict(P["experiment"]), P["runs"])
    dest = Path(args.dest)
    for name in ("auc", "delong", "placement", "selection"):
        copy_record(root / f"{name}_table.csv", dest / f"mil_evidence_{args.preset}_{name}.csv")
    copy_record(root / "experiment_config.json", dest / f"mil_evidence_{args.preset}_config.json")
    return 0


def _combine(args) -> int:
    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga.provenance import write_record
    from maga_core.errors import MagaError

    runs, modules = {}, set()
    for part in args.parts:
        name, _, file = part.partition("=")
        if not file or not Path(file).is_file():
            raise MagaError("expected NAME=FILE of an existing bench JSON", part)
        runs[name] = json.loads(Path(file).read_text())
        modules |= set(runs[name].get("provenance", {}).get("modules", []))
    write_record({"runs": runs}, args.out, also=sorted(modules))
    return 0


def _summary(args) -> int:
    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga import presets
    from maga.book.summary import comparison
    from maga.provenance import provenance, write_sidecar
    from maga.records import load_results
    from maga_core.config import atomic_path
    from maga_core.errors import MagaError

    runs = presets.runs_dir(args.preset)
    if not load_results(runs):
        raise MagaError(f"no chapter records of preset {args.preset} (build its book first)", runs / "results")
    table = comparison(runs)
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False)
    # The table is only as current as the chapters' records it reads: their modules count too.
    also = {m for rec in load_results(runs).values() for m in rec.get("provenance", {}).get("modules", [])}
    write_sidecar(args.out, prov=provenance(config={"preset": args.preset, "runs": str(runs)}, also=sorted(also)))
    return 0
