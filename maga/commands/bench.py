"""`maga bench NAME`: measurements printed as JSON; one subcommand per registered benchmark
(`maga.bench.registry.discover` finds them: every module of the `maga.bench` package)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any, Iterator

from maga.bench.registry import discover


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="speed / memory benchmarks, printed as JSON",
                              description="Measure on this machine; results are JSON (stdout, and --out).")
    sub = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for b in discover().values():
        bp = sub.add_parser(b.name, help=b.help, description=b.help)
        bp.add_argument("--json", action="store_true", help="print only the JSON (no progress bars, no table)")
        bp.add_argument("--out", help="also write the JSON to this file")
        if b.add_arguments:
            b.add_arguments(bp)
        bp.set_defaults(func=lambda args, b=b: _run(b, args))


def _flat(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, dict):
            rows += _flat(v, f"{prefix}{k}.")
        else:
            rows.append((f"{prefix}{k}", v))
    return rows


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Everything written to stdout meanwhile (torch hub's 'Downloading' lines, C libraries, child
    processes inheriting the descriptor) goes to stderr, so `--json` prints only JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _run(bench, args: argparse.Namespace) -> int:
    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga.provenance import provenance
    from maga_core.config import to_jsonable, write_json

    with stdout_to_stderr() if args.json else contextlib.nullcontext():
        result = to_jsonable(bench.run(args))
    config = {k: v for k, v in vars(args).items() if k != "func"}
    result["provenance"] = provenance(config=config)
    if args.out:
        write_json(result, args.out)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        width = max(len(k) for k, _ in _flat(result))
        for k, v in _flat(result):
            print(f"{k:<{width}}  {v}")
    return 0
