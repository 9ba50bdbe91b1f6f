"""The `maga` command. Thin: each subcommand lives in maga/commands/<name>.py and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int`."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

import maga.commands as commands
from maga.provenance import use_cli_argv, use_running
from maga_core.errors import MagaError, OutputError, output_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maga", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"maga.commands.{mod.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # tifffile logs each malformed tag it skips; the command's promise is one line per error.
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    parser = build_parser()
    use_cli_argv(sys.argv[1:] if argv is None else list(argv))  # records made by this command name it
    args = parser.parse_args(argv)
    use_running(args.func)  # of the modules the parser imported, records depend on those this reaches
    try:
        return int(args.func(args) or 0)
    except (MagaError, OSError) as exc:
        err = exc if isinstance(exc, MagaError) else output_error(exc)
        if err is None:
            raise
        print(f"maga {args.command}: error: {err}", file=sys.stderr)
        if isinstance(err, OutputError) and argv is None:
            # A failed write can leave HDF5's state broken, and finalising it then segfaults (measured): as
            # the program (not a caller's function), leave without garbage collection, outputs being atomic.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)
        return 2
    except KeyboardInterrupt:
        print(f"maga {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
