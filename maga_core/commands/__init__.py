"""CLI subcommands, one module each, discovered by maga_core.cli (each exposes `register`)."""
