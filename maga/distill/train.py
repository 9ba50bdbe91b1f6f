"""G2L distillation trainer: a frozen teacher, a small student and a linear projection from the student's
embedding to the teacher's, trained with a feature-level loss on task-specific tiles only.

Choices (the seed publishes no code): the teacher embeds each clean tile once (`teacher_view="clean"`,
cached) and the student learns that embedding from augmented copies of the tile (institution-like stain,
colour, blur, JPEG and scale variation), which asks it to be invariant to exactly what the robustness
index penalises; `teacher_view="same"` instead runs the teacher online on the same geometric view.
The teacher runs at its own input size (`teacher_px`); the student may run smaller (`input_px`), in which
case it also learns across resolution, as a MAGA student does across magnification.
Targets are standardised per dimension over the training tiles so that every teacher dimension counts,
not just the few with large activations. AdamW with one warm-up epoch and cosine decay.

Work folder (`<out>.work/`): config.json, the cached teacher targets, the last finished epoch's state
(resume), and a history of the loss. The checkpoint at `out` is written once, atomically, at the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from maga_core.config import atomic_path, save_config, to_jsonable, write_json
from maga_core.data.tiles import tile_table
from maga_core.device import Runtime, resolve, without_runtime
from maga_core.encoders import build
from maga_core.encoders.mobilenet import (CHECKPOINT_FORMAT, Prepare, STUDENT_SPECS, read_checkpoint,
                                          resize_tile)
from maga_core.errors import MagaError
from maga.distill.augment import AugmentConfig, geometric_view, photometric
from maga.distill.losses import get_loss

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}
TEACHER_VIEWS = ("clean", "same")
# "teacher": G2L distillation; "labels": the same student, tiles, augmentations and schedule trained with
# the tiles' class labels and no teacher, the baseline that separates what distillation adds.
OBJECTIVES = ("teacher", "labels")


@dataclass
class DistillConfig:
    teacher: str = "efficientnet_lite2"
    teacher_weights: str | None = None           # None: the registry's default weights
    student: str = "mobilenetv2_050"
    datasets: list[str] = field(default_factory=lambda: ["lc25000_lung_224_dedup", "uni_tcga_luadlusc"])
    tile_dirs: list[str] = field(default_factory=list)   # extra folders of tiles, all used
    split: str = "train"                         # rows of each dataset's tile table used; never "test"
    max_tiles: int = 0                           # 0: all (else a seeded subset, for smoke runs)
    teacher_px: int = 0                          # the teacher's input size; 0: its registry size
    input_px: int = 0                            # the student's input size; 0: teacher_px
    loss: str = "cosine_smooth_l1"
    standardize_targets: bool = True
    teacher_view: str = "clean"
    objective: str = "teacher"                   # "teacher" (distil) or "labels" (no teacher: the baseline)
    epochs: int = 20
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 1                             # torch threads; 0: torch's default (see measure.py)
    device: str = "auto"                         # auto | cpu | cuda[:N] | mps; saved resolved
    precision: str = "auto"                      # auto | fp32 | bf16 | fp16 autocast; saved resolved
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self):
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v
                                            for k, v in self.augment.items()})
        if self.teacher_view not in TEACHER_VIEWS:
            raise MagaError(f"teacher_view must be one of {TEACHER_VIEWS}, got {self.teacher_view!r}")
        if self.objective not in OBJECTIVES:
            raise MagaError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.objective == "labels" and self.tile_dirs:
            raise MagaError("label-only training needs labelled tile datasets, not folders", ", ".join(self.tile_dirs))
        if self.split == "test":
            raise MagaError("distillation never uses the evaluation tiles (split 'test')")
        get_loss(self.loss)  # unknown names fail before any work


@dataclass
class DistillResult:
    checkpoint: Path
    history: list[dict]
    n_tiles: int
    skipped: list[str]


def collect_tiles(cfg: DistillConfig) -> list[str]:
    """Paths of the training tiles: the `split` rows of each dataset's tile table plus every image under
    `tile_dirs`; a seeded subset of `max_tiles` if set."""
    paths: list[str] = []
    for ds in cfg.datasets:
        table = tile_table(ds)
        paths += table.loc[table["split"] == cfg.split, "path"].astype(str).tolist()
    for d in cfg.tile_dirs:
        root = Path(d)
        if not root.is_dir():
            raise MagaError("tile folder not found", root)
        paths += sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(paths) < 2:
        raise MagaError("fewer than two training tiles (check --tiles)", ", ".join([*cfg.datasets, *cfg.tile_dirs]))
    if cfg.max_tiles and cfg.max_tiles < len(paths):
        keep = np.random.default_rng(cfg.seed).choice(len(paths), cfg.max_tiles, replace=False)
        paths = [paths[i] for i in sorted(keep)]
    return paths


def read_tile(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def tile_labels(cfg: DistillConfig, paths: list[str]) -> tuple[torch.Tensor, list[str], list[str], list[str]]:
    """Class indices of `paths` from the datasets' tile tables (classes sorted by name), the class names,
    and the paths that could not be read (dropped, as the teacher's targets drop them)."""
    import pandas as pd

    table = pd.concat([tile_table(ds) for ds in cfg.datasets], ignore_index=True)
    label_of = dict(zip(table["path"].astype(str), table["class"].astype(str)))
    classes = sorted({label_of[p] for p in paths})
    kept, skipped = [], []
    for p in paths:
        try:
            read_tile(p)
            kept.append(p)
        except (OSError, ValueError) as exc:
            skipped.append(f"{p}: {type(exc).__name__}: {exc}")
    if not kept:
        raise MagaError("none of the training tiles could be read", paths[0])
    return torch.tensor([classes.index(label_of[p]) for p in kept]), kept, skipped, classes


def _same_run(saved: dict, cfg: DistillConfig) -> bool:
    """Configurations equal but for the device (a run may move between machines; see without_runtime)."""
    return without_runtime(saved) == without_runtime(to_jsonable(cfg))


def _teacher_targets(teacher, prepare: Prepare, paths: list[str], batch_size: int, cache: Path, progress: bool,
                     rt: Runtime):
    """Teacher embeddings of the clean tiles [N, D] and the paths that could not be read (cached)."""
    ident = [teacher.identity(), prepare.input_px, paths] + ([rt.precision] if rt.precision != "fp32" else [])
    key = hashlib.sha256(json.dumps(ident).encode()).hexdigest()
    if cache.exists():
        saved = torch.load(cache, map_location="cpu", weights_only=False)
        if saved.get("key") == key:
            return saved["targets"], saved["kept"], saved["skipped"]
    feats, kept, skipped = [], [], []
    for i in tqdm(range(0, len(paths), batch_size), desc="teacher targets", unit="batch", disable=not progress):
        tiles = []
        for p in paths[i:i + batch_size]:
            try:
                tiles.append(read_tile(p))
                kept.append(p)
            except (OSError, ValueError) as exc:
                skipped.append(f"{p}: {type(exc).__name__}: {exc}")
        if tiles:
            with torch.inference_mode(), rt.autocast():
                feats.append(teacher(rt.to(prepare(tiles))).float().cpu())
    if not kept:
        raise MagaError("none of the training tiles could be read", paths[0])
    targets = torch.cat(feats)
    with atomic_path(cache) as tmp:
        torch.save({"key": key, "targets": targets, "kept": kept, "skipped": skipped}, tmp)
    return targets, kept, skipped


def _lr_lambda(steps_per_epoch: int, epochs: int):
    warm, total = steps_per_epoch, steps_per_epoch * epochs

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return f


def work_dir_for(out: Path) -> Path:
    return out.with_name(out.name + ".work")


@dataclass
class DistillRun:
    """What every step of one distillation needs, built once by `setup` (the chapter's walkthrough calls
    `setup`, `epoch_order`, `batch_views` and `step` as `distill` does)."""
    cfg: DistillConfig
    rt: Runtime
    teacher: nn.Module
    student: nn.Module
    projection: nn.Linear
    teacher_prepare: Prepare
    prepare: Prepare
    paths: list[str]
    skipped: list[str]
    classes: list[str]  # the labels objective's classes; empty when distilling
    targets: torch.Tensor  # cached clean-tile teacher embeddings [N, D] (or class indices [N])
    mean: torch.Tensor
    std: torch.Tensor
    loss_fn: Callable
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.paths) / self.cfg.batch_size)


def setup(cfg: DistillConfig, work: Path, progress: bool = True) -> DistillRun:
    """The frozen teacher, its targets (cached in `work`), the seeded student and projection, AdamW and
    its schedule: the state before the first step (`cfg.threads` set for this process)."""
    rt = resolve(cfg.device, cfg.precision)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    paths = collect_tiles(cfg)
    teacher = build(cfg.teacher, cfg.teacher_weights).eval().to(rt.device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    tpx = cfg.teacher_px or teacher.spec.input_px
    teacher_prepare = Prepare(tpx, teacher.spec.mean, teacher.spec.std)
    prepare = Prepare(cfg.input_px or tpx, teacher.spec.mean, teacher.spec.std)

    classes: list[str] = []
    if cfg.objective == "labels":  # the teacher only lends its input size and normalisation
        targets, paths, skipped, classes = tile_labels(cfg, paths)
        mean, std = torch.zeros(len(classes)), torch.ones(len(classes))
        loss_fn = nn.functional.cross_entropy
    else:
        targets, paths, skipped = _teacher_targets(teacher, teacher_prepare, paths, cfg.batch_size,
                                                   work / "teacher_targets.pt", progress, rt)
        mean = targets.mean(0) if cfg.standardize_targets else torch.zeros(targets.shape[1])
        std = targets.std(0) if cfg.standardize_targets else torch.ones(targets.shape[1])
        std = std.clamp_min(0.1 * float(std.mean()))
        loss_fn = get_loss(cfg.loss)

    student = build(cfg.student, "random", seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    projection = nn.Linear(student.dim, len(classes) or teacher.dim)  # labels: the class logits
    student.to(rt.device)
    projection.to(rt.device)
    params = list(student.parameters()) + list(projection.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(math.ceil(len(paths) / cfg.batch_size), cfg.epochs))
    return DistillRun(cfg, rt, teacher, student, projection, teacher_prepare, prepare, paths, skipped, classes,
                      rt.to(targets), rt.to(mean), rt.to(std), loss_fn, opt, sched)


def epoch_order(run: DistillRun, epoch: int) -> list[np.ndarray]:
    """The epoch's batches of tile indices (seeded per epoch, so a resumed run draws the same)."""
    order = np.random.default_rng([run.cfg.seed, epoch]).permutation(len(run.paths))
    bs = run.cfg.batch_size
    return [order[b * bs:(b + 1) * bs] for b in range(run.steps_per_epoch)]


def batch_views(run: DistillRun, idx: np.ndarray, epoch: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(student's augmented views at its input size, teacher's geometric views) of a batch's tiles, seeded
    per (seed, epoch, tile)."""
    s_views, t_views = [], []
    for i in idx:
        rng = np.random.default_rng([run.cfg.seed, epoch, int(i)])
        geo = geometric_view(read_tile(run.paths[i]), run.teacher_prepare.input_px, rng, run.cfg.augment)
        s_views.append(photometric(resize_tile(geo, run.prepare.input_px), rng, run.cfg.augment))
        t_views.append(geo)
    return s_views, t_views


def step(run: DistillRun, idx: np.ndarray, epoch: int) -> float:
    """One optimiser step on a batch (the student in training mode); its loss before the step."""
    rt = run.rt
    run.student.train()
    run.projection.train()
    s_views, t_views = batch_views(run, idx, epoch)
    if run.cfg.teacher_view == "clean" or run.classes:
        target = run.targets[torch.as_tensor(idx, device=rt.device)]
    else:
        with torch.inference_mode(), rt.autocast():
            target = run.teacher(rt.to(run.teacher_prepare(t_views))).float()
        target = target.clone()
    with rt.autocast():
        pred = run.projection(run.student(rt.to(run.prepare(s_views))))
    loss = (run.loss_fn(pred.float(), target) if run.classes else
            run.loss_fn(pred.float(), (target - run.mean) / run.std))
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    run.opt.step()
    run.sched.step()
    return loss.item()


def distill(cfg: DistillConfig, out: str | Path, progress: bool = True) -> DistillResult:
    """Train (or resume, or reuse) a distilled student; write its checkpoint to `out`."""
    out = Path(out)
    work = work_dir_for(out)
    rt = resolve(cfg.device, cfg.precision)
    cfg = dataclasses.replace(cfg, device=rt.device, precision=rt.precision)  # the caller's cfg keeps its key
    if out.exists():
        state = read_checkpoint(out)
        if _same_run(state["config"], cfg):
            return DistillResult(out, state["history"], state["n_tiles"], state["skipped"])
        raise MagaError("a checkpoint from a different configuration is already there; choose another --out", out)
    if cfg.student not in STUDENT_SPECS:
        raise MagaError(f"unknown student (known: {', '.join(STUDENT_SPECS)})", cfg.student)
    collect_tiles(cfg)  # bad --tiles fail before anything is written or built
    work.mkdir(parents=True, exist_ok=True)
    cfg_file = work / "config.json"
    if cfg_file.exists():
        old = json.loads(cfg_file.read_text())
        old.pop("kind", None)
        if not _same_run(old, cfg):
            raise MagaError("work folder holds a run with another configuration; delete it or choose another --out",
                            work)
    save_config(cfg, work)
    run = setup(cfg, work, progress)
    student, projection, opt, sched = run.student, run.projection, run.opt, run.sched
    history: list[dict] = []
    start = 0
    state_file = work / "state.pt"
    if state_file.exists():
        st = torch.load(state_file, map_location="cpu", weights_only=False)
        student.model.load_state_dict(st["student"])
        projection.load_state_dict(st["projection"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        history, start = st["history"], st["epoch"] + 1

    bar = tqdm(total=cfg.epochs * run.steps_per_epoch, initial=start * run.steps_per_epoch, desc="distill",
               unit="step", disable=not progress)
    for epoch in range(start, cfg.epochs):
        losses = []
        for idx in epoch_order(run, epoch):
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            losses.append(step(run, idx, epoch))
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.4f}")
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "step_losses": losses,
                        "lr": float(sched.get_last_lr()[0])})
        with atomic_path(state_file) as tmp:
            torch.save({"student": _cpu(student.model.state_dict()), "projection": _cpu(projection.state_dict()),
                        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "history": history,
                        "epoch": epoch}, tmp)
        write_json([{k: v for k, v in h.items() if k != "step_losses"} for h in history], work / "history.json")
    bar.close()

    teacher = run.teacher
    ckpt = {
        "format": CHECKPOINT_FORMAT, "student_arch": cfg.student, "student": _cpu(student.model.state_dict()),
        "projection": _cpu(projection.state_dict()), "target_mean": run.mean.cpu(), "target_std": run.std.cpu(),
        "teacher": teacher.identity(), "teacher_dim": teacher.dim, "teacher_px": run.teacher_prepare.input_px,
        "input_px": run.prepare.input_px, "mean": list(teacher.spec.mean), "std": list(teacher.spec.std),
        "config": to_jsonable(cfg), "history": history, "n_tiles": len(run.paths), "skipped": run.skipped,
        "finished": True, "objective": cfg.objective, "classes": run.classes,
    }
    with atomic_path(out) as tmp:
        torch.save(ckpt, tmp)
    return DistillResult(out, history, len(run.paths), run.skipped)


def _cpu(state: dict) -> dict:
    return {k: v.cpu() for k, v in state.items()}


def config_from_dict(d: dict) -> DistillConfig:
    names = {f.name for f in dataclasses.fields(DistillConfig)}
    return DistillConfig(**{k: v for k, v in d.items() if k in names})
