"""The service model the telepathology chapter and `maga bench telepath` use, built from earlier work:
the GLTrans aggregator that chapter 4 trained on the teacher's 20x features of the real-tile cohort
(fold 0's selected checkpoint), and the 5x MAGA student that the same run used."""

from __future__ import annotations

import json
from pathlib import Path

from maga_core.errors import MagaError
from maga import presets
from maga.experiments.mil import ExperimentConfig, default_root, ensure_experiment, student_checkpoint
from maga.telepath.pipeline import ServiceModel, save_service_model

AGGREGATOR = "gltrans"


def ensure_service_model(preset: str, runs: Path, aggregator: str = AGGREGATOR, progress: bool = True) -> Path:
    """<runs>/telepath/service_...: bundled once from chapter 4's run under `preset` (run if absent)."""
    P = presets.resolve("04_mil_cross_validation", preset, runs=runs)
    cfg = ExperimentConfig.from_dict(P["experiment"])
    if aggregator not in cfg.models or "20x" not in cfg.settings:
        raise MagaError(f"chapter 4's {preset} run trains no {aggregator} at 20x", presets.PRESETS_FILE)
    root = default_root(cfg, runs)
    folder = Path(runs) / "telepath" / f"service_{root.name}_{aggregator}"
    if (folder / "service.json").is_file():
        return folder
    ensure_experiment(cfg, runs, root, progress=progress)
    runs = root / "cv" / "20x" / aggregator
    fold_dirs = sorted(runs.glob("fold_*"))
    if not fold_dirs:
        raise MagaError("no trained folds", runs)
    classes = json.loads((runs / "classes.json").read_text())["classes"]
    task = json.loads((root / "cohort" / "cohort.json").read_text())["task"]
    spec = ServiceModel(encoder=cfg.encoder, classes=[str(c) for c in classes],
                        trained_on=f"{task} cohort of real tiles, 20x teacher features ({fold_dirs[0].name} "
                                   f"of {root.name})")
    return save_service_model(folder, spec, fold_dirs[0] / "checkpoint.pt",
                              students={5.0: student_checkpoint(cfg, runs, progress)})
