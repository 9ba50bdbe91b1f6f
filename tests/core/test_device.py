"""--device / --precision plumbing, checked honestly on the CPU: what resolves to what, the device and
dtype of outputs, what is recorded in configs and feature files, and how far bf16 autocast moves real
features from fp32 (CUDA paths themselves need a GPU: tools/device_check.sh)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from maga_core import device
from maga_core.errors import MagaError
from maga.extract import load_model
from maga.extract_job import ExtractConfig, extract_batch
from maga_core.slides import aligned_grid, detect_tissue, open_slide, read_patch

# Relative L2 error of bf16-autocast features against fp32 ones on real patches (bf16 keeps 8 bits of
# mantissa: ~0.4% per operation, a few percent through a deep network). Cosine similarity stays near 1.
BF16_REL_TOL = 0.08
BF16_MIN_COS = 0.995


def test_resolve_on_this_machine(monkeypatch):
    assert device.resolve("cpu", "auto") == device.Runtime("cpu", "fp32")
    assert device.resolve("cpu", "bf16").dtype == torch.bfloat16
    rt = device.resolve("cpu", "fp16")
    assert rt.precision == "fp16" and not rt.pin_memory and rt.record()["device"] == "cpu"
    with pytest.raises(MagaError, match="--device must be"):
        device.resolve("gpu")
    with pytest.raises(MagaError, match="--precision must be"):
        device.resolve("cpu", "int8")
    if not torch.cuda.is_available():
        assert device.resolve("auto").device in ("cpu", "mps")
        with pytest.raises(MagaError, match="no CUDA GPU is visible"):
            device.resolve("cuda:0")
    else:  # torchrun's LOCAL_RANK picks this rank's GPU
        monkeypatch.setenv("LOCAL_RANK", "0")
        rt = device.resolve("auto")
        assert rt.device == "cuda:0" and rt.pin_memory and rt.precision in ("bf16", "fp16")


@pytest.mark.usefixtures("one_thread")
def test_bf16_features_close_to_fp32_and_outputs_fp32_on_cpu(cmu):
    fp32 = load_model("efficientnet_lite0", mag=20, runtime=device.Runtime("cpu", "fp32"))
    bf16 = load_model("efficientnet_lite0", mag=20, runtime=device.Runtime("cpu", "bf16"))
    with open_slide(cmu) as reader:
        coords = aligned_grid(reader, detect_tissue(reader), (20.0,))[:8]
        x = fp32.preprocess(np.stack([read_patch(reader, tuple(c), 20.0) for c in coords]))
    a, b = fp32(x), bf16(x)
    assert a.dtype == b.dtype == torch.float32 and a.device.type == b.device.type == "cpu"
    rel = float((a - b).norm() / a.norm())
    cos = float(torch.nn.functional.cosine_similarity(a, b).min())
    assert 0 < rel < BF16_REL_TOL, rel  # > 0: bf16 really ran
    assert cos > BF16_MIN_COS, cos


@pytest.mark.usefixtures("one_thread")
def test_extract_records_device_and_precision(tmp_path, cmu):
    cfg = ExtractConfig(encoder="efficientnet_lite0", input=str(cmu), out=str(tmp_path / "out"), mag=5,
                        num_workers=0, progress=False, device="auto", precision="bf16")
    report = extract_batch(cfg)
    assert report.ok
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["device"] == ("cpu" if not torch.cuda.is_available() else saved["device"])
    assert saved["precision"] == "bf16" and saved["device"] != "auto"
    with h5py.File(report.done[0].out) as h5:
        assert h5.attrs["device"] == saved["device"] and h5.attrs["precision"] == "bf16"
        assert h5["features"].dtype == np.float32


def test_e2e_precision_resolution():
    from maga.e2e.train import E2EConfig, resolve_runtime

    cpu = resolve_runtime(E2EConfig(device="cpu"))
    assert (cpu.device, cpu.precision, cpu.amp) == ("cpu", "fp32", False)
    amp = resolve_runtime(E2EConfig(device="cpu", amp=True))  # the old switch: bf16 on CPU
    assert (amp.precision, amp.amp) == ("bf16", True)
    assert resolve_runtime(E2EConfig(device="cpu", precision="fp16")).amp


@pytest.mark.usefixtures("one_thread")
def test_mil_training_under_bf16_autocast_records_it(tmp_path):
    from maga_core.mil.train import Bag, TrainConfig, load_checkpoint, predict_bags, train_run

    gen = torch.Generator().manual_seed(0)
    bags = [Bag(f"s{i}", torch.randn(30, 16, generator=gen) + (i % 2), i % 2) for i in range(6)]
    cfg = TrainConfig.for_model("abmil", max_epochs=2, precision="bf16", device="cpu", grad_accum=3)
    model, result = train_run(cfg, bags[:4], bags[4:], tmp_path / "run", n_classes=2, progress=False)
    assert len(result.history) == 2 and np.isfinite(result.history["train_loss"]).all()
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["device"], saved["precision"], saved["grad_accum"]) == ("cpu", "bf16", 3)
    probs = predict_bags(model, bags)["probs"]
    assert probs.dtype == np.float32 and np.allclose(probs.sum(1), 1, atol=1e-5)
    reloaded, rcfg = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert rcfg.precision == "bf16" and next(reloaded.parameters()).device.type == "cpu"
