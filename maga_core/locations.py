"""Where the data mirror, the reference folder and the runs folder are, and where that answer came from,
so that the package finds them without the Makefile and `maga doctor` can say which one is in use.

Data mirror (the public data files; `MAGA_REFERENCE_DIR` / `reference_dir` / `shared/reference` alike):
  1. the environment variable `MAGA_DATA_DIR`;
  2. `data_dir:` in the user config file, `$MAGA_CONFIG`, else `$XDG_CONFIG_HOME/maga/config.yaml`
     (default `~/.config/maga/config.yaml`); a relative path there is relative to the file;
  3. the `shared/data` folder that sits beside the checkout the package runs from (a source checkout, not
     an installed wheel): how the project's machines lay the mirror out.
Runs folder (artifacts chapters share): `MAGA_RUNS_DIR`, else `runs/` of the checkout, else `./runs` of the
current directory (an installed wheel).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from maga_core.errors import MagaError

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_ENV = "MAGA_CONFIG"
SIBLING = "shared"  # the folder beside a checkout that holds data/ and reference/


@dataclass(frozen=True)
class Location:
    """A folder (None when nothing was found) and where it came from, in words."""

    path: Path | None
    source: str


@dataclass(frozen=True)
class _Kind:
    env: str
    key: str  # in the user config file
    beside: str  # under the SIBLING folder of the checkout


DATA = _Kind("MAGA_DATA_DIR", "data_dir", "data")
REFERENCE = _Kind("MAGA_REFERENCE_DIR", "reference_dir", "reference")


def checkout_root() -> Path | None:
    """The source checkout the package is imported from (its folder holds pyproject.toml); None for an
    installed wheel, whose package lives in site-packages."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() else None


def user_config_file() -> Path:
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "maga" / "config.yaml"


def user_config() -> dict:
    """The user config file as a mapping ({} when absent); a malformed file is a one-line error."""
    path = user_config_file()
    if not path.is_file():
        return {}
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise MagaError(f"not valid YAML ({(str(exc).splitlines() or [type(exc).__name__])[0]})", path) from None
    if not isinstance(doc, dict):
        raise MagaError("expected a mapping such as 'data_dir: /path/to/data'", path)
    return doc


def _find(kind: _Kind) -> Location:
    if os.environ.get(kind.env):
        return Location(Path(os.environ[kind.env]).expanduser(), f"${kind.env}")
    value = user_config().get(kind.key)
    if value:
        config = user_config_file()
        return Location((config.parent / Path(str(value)).expanduser()).resolve(), f"{kind.key} in {config}")
    checkout = checkout_root()
    if checkout is not None and (checkout.parent / SIBLING / kind.beside).is_dir():
        return Location(checkout.parent / SIBLING / kind.beside, sibling_source(kind))
    return Location(None, "not found")


def sibling_source(kind: _Kind = DATA) -> str:
    """The third place searched, in words."""
    return f"{SIBLING}/{kind.beside} beside the checkout"


def searched(kind: _Kind = DATA) -> str:
    """Every place searched, in order, for a 'not found' message."""
    return f"${kind.env}, '{kind.key}:' in {user_config_file()}, {sibling_source(kind)}"


def data_dir() -> Location:
    return _find(DATA)


def reference_dir() -> Location:
    return _find(REFERENCE)


def how_to_set(kind: _Kind = DATA) -> str:
    """The fix, in one line, for an error message."""
    return (f"set {kind.env} (or '{kind.key}:' in {user_config_file()}) to the local copy, or place it at "
            f"{sibling_source(kind)}")


def runs_root() -> Location:
    if os.environ.get("MAGA_RUNS_DIR"):
        return Location(Path(os.environ["MAGA_RUNS_DIR"]).expanduser(), "$MAGA_RUNS_DIR")
    checkout = checkout_root()
    if checkout is not None:
        return Location(checkout / "runs", "runs/ of the checkout")
    return Location(Path.cwd() / "runs", "./runs of the current directory")
