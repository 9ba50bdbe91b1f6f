"""The `maga bench` registry: a module of this package decorates `run(args) -> dict` with
`@benchmark(name, help, add_arguments)`; `discover()` imports every module beside this one, so a new
`maga bench NAME` is a new file here and no edit elsewhere. Keep those modules' top-level imports light:
they are imported whenever the `maga` parser is built."""

from __future__ import annotations

import argparse
import importlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ArgAdder = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class Benchmark:
    name: str
    help: str
    run: Callable[[argparse.Namespace], dict[str, Any]]
    add_arguments: ArgAdder | None = None


BENCHMARKS: dict[str, Benchmark] = {}


def benchmark(name: str, help: str, add_arguments: ArgAdder | None = None):
    """Register `run(args) -> dict` as `maga bench NAME`."""

    def deco(fn: Callable[[argparse.Namespace], dict[str, Any]]):
        BENCHMARKS[name] = Benchmark(name, help, fn, add_arguments)
        return fn

    return deco


def discover() -> dict[str, Benchmark]:
    """Import every benchmark module (see the module docstring) and return the registry."""
    root = Path(__file__).resolve().parent
    for p in sorted(root.glob("*.py")):
        if p.stem not in ("__init__", "registry"):
            importlib.import_module(f"maga.bench.{p.stem}")
    return dict(sorted(BENCHMARKS.items()))


def machine() -> dict[str, Any]:
    """What the numbers depend on, including how busy the machine was (shared CPUs)."""
    import torch

    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "processor": platform.processor() or platform.machine(),
            "load_avg_1m": round(os.getloadavg()[0], 2)}
