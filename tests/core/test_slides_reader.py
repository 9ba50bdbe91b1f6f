"""Slide readers on the real slides: MPP / magnification resolution, the missing-MPP error, and the
tifffile (OME-TIFF, stripped TIFF) and plain-image backends agreeing with OpenSlide's pixels."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from maga_core.errors import MagaError
from maga_core.slides import open_slide, read_patch
from maga_core.slides.magnification import mpp_from_resolution, resolution_from_ome



@pytest.fixture(scope="module")
def cmu_crop(cmu):
    with open_slide(cmu) as r:
        return r.read_region((400, 600), 0, (1200, 900))


def test_cmu_mpp_and_magnification(cmu):
    with open_slide(cmu) as r:
        assert r.format == "openslide/aperio"
        assert r.dimensions == (2220, 2967) and r.level_count == 1
        assert r.mpp == pytest.approx(0.499)
        assert r.resolution.mpp_source == "openslide.mpp-x/y"
        assert r.objective_power == 20
        info = r.info()
        assert info["magnification"] == "20.04x"
        region = r.read_region((100, 200), 0, (64, 32))
        assert region.shape == (32, 64, 3) and region.dtype == np.uint8


def test_tcga_frozen_section_without_mpp_names_the_override(tcga):
    with pytest.raises(MagaError) as err:
        open_slide(tcga)
    msg = str(err.value)
    assert str(tcga) in msg and "no microns-per-pixel" in msg and "--mpp" in msg and "\n" not in msg


def test_tcga_with_override_resolves_and_reads_jpeg2000(tcga):
    with open_slide(tcga, mpp=0.5) as r:
        assert r.resolution.mpp_source == "override" and r.mpp == 0.5
        assert r.objective_power == 20 and r.resolution.objective_source == "from MPP"
        assert r.level_dimensions == ((4443, 3567), (2221, 1783))
        # 10x (downsample 2) comes from level 1 although its downsample is 2.0005, not 2
        assert r.best_level_for_downsample(2.0) == 1
        patch = read_patch(r, (2000, 1500), 10)
        assert patch.shape == (128, 128, 3) and patch.std() > 10  # real J2K tissue, not blank


def test_bad_override_is_rejected(cmu):
    with pytest.raises(MagaError, match="--mpp must be a positive number"):
        open_slide(cmu, mpp=-1)


def test_ome_tiff_pyramid_via_tifffile(tmp_path, cmu_crop):
    """A tiled pyramidal OME-TIFF (lossless) reads back pixel-exactly, MPP from OME-XML, and a 20x
    patch from this 40x file comes from its level 1, matching level 0 resampled."""
    path = tmp_path / "crop.ome.tif"
    half = np.asarray(Image.fromarray(cmu_crop).resize((600, 450), Image.Resampling.BOX))
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(cmu_crop, tile=(256, 256), compression="zlib", subifds=1, photometric="rgb",
                 metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
        tw.write(half, tile=(256, 256), compression="zlib", subfiletype=1, photometric="rgb")
    with open_slide(path) as r:
        assert r.format == "tifffile/ome"
        assert r.mpp == 0.25 and r.resolution.mpp_source == "ome PhysicalSizeX/Y"
        assert r.objective_power == 40
        assert r.level_dimensions == ((1200, 900), (600, 450))
        np.testing.assert_array_equal(r.read_region((300, 250), 0, (400, 300)), cmu_crop[250:550, 300:700])
        edge = r.read_region((1100, 800), 0, (200, 200))  # past the edge: white
        np.testing.assert_array_equal(edge[:100, :100], cmu_crop[800:, 1100:])
        assert (edge[100:, :] == 255).all() and (edge[:, 100:] == 255).all()
        assert r.best_level_for_downsample(2.0) == 1
        patch = read_patch(r, (200, 200), 20)
    ref = np.asarray(Image.fromarray(cmu_crop[200:712, 200:712]).resize((256, 256), Image.Resampling.BOX))
    mse = np.mean((patch.astype(float) - ref.astype(float)) ** 2)
    assert 10 * np.log10(255**2 / mse) > 30


def test_stripped_tiff_resolution_tags(tmp_path, cmu_crop):
    """OpenSlide refuses untiled TIFFs; tifffile reads them, MPP from XResolution in pixels/cm."""
    path = tmp_path / "strips.tif"
    tifffile.imwrite(path, cmu_crop, photometric="rgb", rowsperstrip=64,
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    with open_slide(path) as r:
        assert r.format == "tifffile/tiff" and r.mpp == pytest.approx(0.5)
        assert r.resolution.mpp_source == "tiff resolution"
        np.testing.assert_array_equal(r.read_region((10, 100), 0, (500, 150)), cmu_crop[100:250, 10:510])


def test_plain_image_needs_stated_mpp(data_file):
    png = data_file("pypi_tiatoolbox_target", "target_image.png")
    with pytest.raises(MagaError, match="--mpp"):
        open_slide(png)
    with open_slide(png, mpp=0.5) as r:
        assert r.format == "image/png" and r.dimensions == (1000, 1000)
        expected = np.asarray(Image.open(png).convert("RGB"))[50:150, 20:220]
        np.testing.assert_array_equal(r.read_region((20, 50), 0, (200, 100)), expected)


def test_metadata_parsers_reject_tool_defaults():
    assert mpp_from_resolution((20000, 1), (20000, 1), 3) == pytest.approx(0.5)  # px/cm
    assert mpp_from_resolution(50800, 50800, 2) == pytest.approx(0.5)  # px/inch
    assert mpp_from_resolution(72, 72, 2) is None  # 72 dpi screen default, not a scan
    assert mpp_from_resolution(20000, 20000, 1) is None  # no unit
    xml = ('<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Instrument><Objective '
           'NominalMagnification="40"/></Instrument><Image><Pixels PhysicalSizeX="250" '
           'PhysicalSizeXUnit="nm" PhysicalSizeY="250" PhysicalSizeYUnit="nm"/></Image></OME>')
    assert resolution_from_ome(xml) == (pytest.approx(0.25), 40.0)


@pytest.mark.parametrize("keep", [0.5, 0.995])
def test_truncated_svs_is_named_truncated(cmu, tmp_path, keep):
    """Cut early, OpenSlide refuses the file; cut in the last directory, it would open what is left
    and lose the Aperio metadata. Both are reported as truncated."""
    data = cmu.read_bytes()
    path = tmp_path / "cut.svs"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(MagaError, match="truncated slide") as err:
        open_slide(path)
    assert str(path) in str(err.value)
