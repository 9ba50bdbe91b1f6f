"""Provenance of a record: which code, command, configuration and machine made it, so that a reader (and
`maga results`) can tell whether a number under results/ still describes the code it sits beside.

Every writer of a record goes through here: JSON records carry it under a `provenance` key
(`write_record`), any other file gets a sidecar `<name>.provenance.json` (`write_sidecar`).
`modules` lists the repository files of this package loaded when the record was made (from
sys.modules): the code the number depends on, which `maga.results_index` compares with HEAD."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

from maga_core.config import to_jsonable, write_json
from maga_core.errors import MagaError

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("maga", "maga_core")
# The book builder names the chapter a notebook's records come from (a kernel's argv is ipykernel's).
COMMAND_ENV = "MAGA_RECORD_COMMAND"
# ... and the files beside the package a chapter's record depends on (its notebook, the presets).
SOURCES_ENV = "MAGA_RECORD_SOURCES"
SIDECAR_SUFFIX = ".provenance.json"
# The `maga` arguments of this process, set by maga.cli.main (also when called in-process, as tests do).
_cli_argv: list[str] | None = None
# Building the `maga` parser imports every subcommand and benchmark module (they register their options);
# a record depends only on those its own command reaches, from the functions it runs (`use_running`).
REGISTRATION = ("maga/commands/", "maga/bench/")
_running: list[Any] = []


def use_cli_argv(argv: list[str]) -> None:
    global _cli_argv
    _cli_argv = list(argv)


def use_running(*functions: Any) -> None:
    """The functions this process's command runs (maga.cli: the subcommand's; `maga bench`: the benchmark's):
    of the registration modules, records list only those these reach."""
    _running.extend(functions)


def _module_names(value: Any) -> set[str]:
    """Our modules a value comes from: a module, a function or class, and the functions held by a
    callable's default arguments (a subcommand lambda carries the benchmark it runs there)."""
    names = {value.__name__} if isinstance(value, ModuleType) else {getattr(value, "__module__", None)}
    for default in getattr(value, "__defaults__", None) or ():
        names |= {getattr(v, "__module__", None) for v in getattr(default, "__dict__", {}).values() if callable(v)}
    return {n for n in names if isinstance(n, str) and n.split(".")[0] in PACKAGES}


def _reached(roots: list[Any]) -> set[str]:
    """Module names reachable from `roots` through the globals of registration modules."""
    todo = set().union(*(_module_names(r) for r in roots)) if roots else set()
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        seen.add(name)
        mod = sys.modules.get(name)
        file = getattr(mod, "__file__", "") or ""
        if mod is None or not any(part in Path(file).as_posix() for part in REGISTRATION):
            continue
        for value in list(vars(mod).values()):
            todo |= _module_names(value) - seen
    return seen


def git(*args: str, repo: Path = REPO_ROOT) -> str | None:
    """Output of a git command in `repo`, or None outside a checkout (an installed wheel)."""
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def command_line() -> str:
    """The command as a user would type it: `maga ...` for the entry point, else the argv."""
    if os.environ.get(COMMAND_ENV):
        return os.environ[COMMAND_ENV]
    if _cli_argv is not None:
        return shlex.join(["maga", *_cli_argv])
    argv = list(sys.argv)
    name = Path(argv[0]).name if argv else ""
    if name == "maga" or argv[:1] == ["-m"] or name.endswith("cli.py"):
        argv = ["maga", *argv[1:]]
    return shlex.join(argv) if argv else ""


def loaded_modules(repo: Path = REPO_ROOT) -> list[str]:
    """Repo-relative paths of this project's modules imported in this process, sorted; of the subcommand
    and benchmark modules, only those the running command reaches (all of them when none is known)."""
    out = set()
    reached = _reached(_running) if _running else None
    for name, mod in list(sys.modules.items()):
        if name.split(".")[0] not in PACKAGES:
            continue
        file = getattr(mod, "__file__", None)
        if not file:
            continue
        try:
            rel = Path(file).resolve().relative_to(repo).as_posix()
        except ValueError:
            continue
        if reached is not None and rel.startswith(REGISTRATION) and name not in reached:
            continue
        out.add(rel)
    return sorted(out)


def machine(device: str | None = None) -> dict[str, Any]:
    """Cores, device, load and versions: what speed and numerics depend on."""
    torch = sys.modules.get("torch")
    if device is None:
        device = "cuda" if torch is not None and torch.cuda.is_available() else "cpu"
    return {"cpu_count": os.cpu_count(), "device": device, "load_avg_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version(), "torch": getattr(torch, "__version__", None),
            "torch_threads": torch.get_num_threads() if torch is not None else None,
            "processor": platform.processor() or platform.machine(), "node": platform.node()}


def provenance(config: Any = None, command: str | None = None, device: str | None = None,
               repo: Path = REPO_ROOT, also: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """The provenance block of a record made now, in this process; `also` adds the modules of the records
    it was made from (a combination or a table of other records is only as current as they are)."""
    cfg = to_jsonable(config) if config is not None else None
    if device is None and isinstance(cfg, dict) and isinstance(cfg.get("device"), str):
        device = cfg["device"]
    # Dirty means uncommitted code: records already rewritten under results/ by the same run do not count.
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results", repo=repo)
    sources = os.environ.get(SOURCES_ENV, "")
    return {"commit": git("rev-parse", "HEAD", repo=repo), "dirty": bool(status) if status is not None else None,
            "command": command if command is not None else command_line(), "config": cfg,
            "machine": machine(device), "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "modules": sorted(set(loaded_modules(repo)) | set(also) | set(filter(None, sources.split(os.pathsep))))}


def write_record(payload: dict[str, Any], path: str | Path, config: Any = None, command: str | None = None,
                 also: tuple[str, ...] | list[str] = ()) -> Path:
    """Write a JSON record with its provenance (under `provenance`), atomically."""
    body = {k: v for k, v in to_jsonable(payload).items() if k != "provenance"}
    return write_json({**body, "provenance": provenance(config, command, also=also)}, path)


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def write_sidecar(path: str | Path, config: Any = None, command: str | None = None,
                  prov: dict[str, Any] | None = None) -> Path:
    """Provenance of a non-JSON record (CSV, text) beside it; `prov` copies one made earlier."""
    return write_json(prov if prov is not None else provenance(config, command), sidecar_path(path))


def read_provenance(path: str | Path) -> dict[str, Any] | None:
    """A record's provenance (its `provenance` key, else its sidecar), or None when it carries none."""
    path = Path(path)
    side = sidecar_path(path)
    try:
        if side.exists():
            return json.loads(side.read_text())
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            return data.get("provenance") if isinstance(data, dict) else None
    except json.JSONDecodeError as exc:
        raise MagaError(f"not valid JSON ({exc.msg})", side if side.exists() else path) from None
    return None
