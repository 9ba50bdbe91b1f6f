"""The install is what pyproject.toml pins, and environment.yml says the same."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["dev"]
    return dict(re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", r).groups() for r in reqs)


def test_every_direct_dependency_is_pinned_and_installed():
    for name, pinned in _pins().items():
        assert version(name).split("+")[0] == pinned, name


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert dict(p.split("==") for p in pip) == _pins()


def test_doctor_checks_the_pinned_torch_pair():
    """`maga doctor`'s check of torch/torchvision passes here, reports the pinned versions, and its fix
    installs exactly the pins of pyproject.toml."""
    from maga.commands.doctor import check_torch

    ok, detail, fix = check_torch()
    pins = _pins()
    assert ok, detail
    assert detail.startswith(f"torch {pins['torch']}") and f"torchvision {pins['torchvision']}" in detail
    assert f"torch=={pins['torch']} torchvision=={pins['torchvision']}" in fix
