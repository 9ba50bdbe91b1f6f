"""CLI subcommands, one module each, discovered by maga.cli (each exposes `register`)."""
