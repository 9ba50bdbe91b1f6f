"""The `maga` command. Thin: each subcommand lives in maga/commands/<name>.py and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int`."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import maga.commands as commands
from maga.provenance import use_cli_argv
from maga_core.errors import MagaError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maga", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"maga.commands.{mod.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    use_cli_argv(argv)  # records made by this command name it
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MagaError as exc:
        print(f"maga {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"maga {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
