"""What the server runs on an uploaded slide: tiling, encoding, aggregation, heatmap, each timed.

A service model is a folder: `service.json` (encoder, classes, aggregator, MAGA students per
magnification) plus the aggregator's weights. The aggregator is trained on the teacher's 20x features;
at a lower magnification the MAGA student for that magnification produces features in the teacher's
space, so the same aggregator applies (the point of MAGA). Without a student the teacher reads the
low-magnification patches directly: the paper's "5x without MAGA" baseline.
"""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from maga_core.config import atomic_path, write_json
from maga_core.device import Runtime
from maga_core.errors import MagaError
from maga_core.mil.train import load_checkpoint
from maga_core.slides import aligned_grid, detect_tissue, level0_extent, open_slide
from maga.extract import SlidePatches, embed, load_model


@dataclass
class ServiceModel:
    encoder: str
    classes: list[str]
    aggregator: str = "aggregator.pt"  # a maga_core.mil.train checkpoint file in the folder
    students: dict[str, str] = field(default_factory=dict)  # "5" -> checkpoint file name in the folder
    trained_on: str = ""  # what the aggregator learnt from, shown to users


def save_service_model(folder: str | Path, model: ServiceModel, aggregator_ckpt: str | Path,
                       students: dict[float, str | Path] | None = None) -> Path:
    """Bundle an aggregator checkpoint (and MAGA students) into a folder `maga serve --model` loads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {model.aggregator: aggregator_ckpt}
    for mag, ckpt in (students or {}).items():
        model.students[f"{mag:g}"] = f"student_{mag:g}x.pt"
        files[model.students[f"{mag:g}"]] = ckpt
    for name, src in files.items():
        with atomic_path(folder / name) as tmp:
            shutil.copyfile(src, tmp)
    write_json(asdict(model), folder / "service.json")  # last: a folder with service.json is whole
    return folder


class SlideAnalyzer:
    """Loads the networks once; `analyze` is safe to call from several threads (one forward at a time)."""

    def __init__(self, spec: ServiceModel, folder: Path, num_workers: int = 0, runtime: Runtime | None = None):
        self.spec, self.folder, self.num_workers = spec, folder, num_workers
        self.runtime = runtime or Runtime()
        self.aggregator, self.aggregator_config = load_checkpoint(folder / spec.aggregator)
        self.aggregator.to(self.runtime.device)
        self._models: dict[float, object] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, folder: str | Path, num_workers: int = 0, runtime: Runtime | None = None) -> "SlideAnalyzer":
        folder = Path(folder)
        if not (folder / "service.json").exists():
            raise MagaError("not a service model folder (no service.json)", folder)
        return cls(ServiceModel(**json.loads((folder / "service.json").read_text())), folder, num_workers, runtime)

    def feature_model(self, mag: float):
        """The teacher at 20x (or without a student), else the MAGA student trained for `mag`."""
        if mag not in self._models:
            student = self.spec.students.get(f"{mag:g}")
            self._models[mag] = (load_model(self.spec.encoder, student=self.folder / student, runtime=self.runtime)
                                 if student else load_model(self.spec.encoder, mag=mag, runtime=self.runtime))
        return self._models[mag]

    def analyze(self, path: Path, magnification: float) -> dict:
        t0 = time.perf_counter()
        with open_slide(path) as reader:
            mask = detect_tissue(reader)
            model = self.feature_model(magnification)
            coords = aligned_grid(reader, mask, (model.mag,), {model.mag: model.patch_px})
            dims, side = reader.dimensions, level0_extent(reader, model.mag, model.patch_px)
        t1 = time.perf_counter()
        with self._lock:
            feats = embed(SlidePatches(path, coords, model.mag, model.patch_px), model,
                          num_workers=self.num_workers, progress=False)
            t2 = time.perf_counter()
            x = self.runtime.to(torch.from_numpy(feats))
            with torch.no_grad():
                probs = torch.softmax(self.aggregator(x).logits.float(), dim=1)[0].cpu().numpy()
            t3 = time.perf_counter()
            # Per-instance scores may need gradients (integrated gradients): a second, separate pass.
            scores = self.aggregator(x).scores.detach().float().cpu().numpy()
        png = heatmap_png(mask.thumbnail, dims, coords, scores, side)
        t4 = time.perf_counter()
        k = int(np.argmax(probs))
        return {
            "prediction": self.spec.classes[k],
            "probabilities": {c: float(p) for c, p in zip(self.spec.classes, probs)},
            "magnification": float(model.mag), "patch_px": int(model.patch_px), "n_patches": int(len(coords)),
            "slide_dimensions": [int(d) for d in dims], "encoder": model.encoder,
            "maga_student": bool(model.student_sha256), "aggregator": type(self.aggregator).__name__,
            "device": self.runtime.device, "precision": self.runtime.precision,
            "timings": {"tiling_s": t1 - t0, "encoding_s": t2 - t1, "aggregation_s": t3 - t2,
                        "heatmap_s": t4 - t3, "analysis_s": t4 - t0},
            "heatmap_png": png,
        }


def heatmap_png(thumb: np.ndarray, dims: tuple[int, int], coords: np.ndarray, scores: np.ndarray,
                patch_level0: float) -> bytes:
    """Per-patch scores (rank-normalised) painted over the slide thumbnail, as PNG bytes."""
    from matplotlib import colormaps
    from PIL import Image

    h, w = thumb.shape[:2]
    sx, sy = w / dims[0], h / dims[1]
    heat = np.zeros((h, w), np.float32)
    cover = np.zeros((h, w), bool)
    ranks = np.argsort(np.argsort(scores)) / max(len(scores) - 1, 1)
    for (x, y), r in zip(coords, ranks):
        x0, y0 = int(x * sx), int(y * sy)
        x1, y1 = max(x0 + 1, int((x + patch_level0) * sx)), max(y0 + 1, int((y + patch_level0) * sy))
        heat[y0:y1, x0:x1] = r
        cover[y0:y1, x0:x1] = True
    rgb = (colormaps["jet"](heat)[..., :3] * 255).astype(np.float32)
    blend = thumb[..., :3].astype(np.float32)
    blend[cover] = 0.5 * blend[cover] + 0.5 * rgb[cover]
    buf = io.BytesIO()
    Image.fromarray(blend.clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
