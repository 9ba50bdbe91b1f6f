"""MAGA training: a frozen teacher at high magnification teaches a copy of itself to produce, from the
low-magnification view of the same tissue, the teacher's block outputs and pooled feature.

Choices (recorded in every checkpoint):
- Teacher frozen and in eval mode (upstream left its BatchNorm statistics updating).
- Student = copy of the teacher, kept in eval mode too: its BatchNorm running statistics stay frozen at the
  teacher's (the affine parameters still train). Low-magnification inputs shift activation statistics,
  and re-estimating them from a few hundred tiles is noisier than letting the weights adapt.
- Adam, lr 1e-4 multiplied by 0.9 after every epoch (paper); no augmentation (upstream).
- Deterministic on CPU: the tile order of epoch e comes from a generator seeded by (seed, e), so a resumed
  run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from maga_core.config import atomic_path, save_config, to_jsonable, write_json
from maga_core.device import Runtime, resolve
from maga_core.encoders import build
from maga_core.errors import MagaError
from maga_core.maga.loss import MagaLoss, match_teacher, resolve_weights
from maga_core.maga.student import CHECKPOINT_FORMAT, InputPipeline, pipeline_dict
from maga_core.maga.tilesource import read_tile, resolve_tiles
from maga_core.maga.views import resize_patch, view_px

# Fields that may differ between an interrupted run and its resumption.
_RESUMABLE_DIFFERENCES = {"epochs", "num_workers", "teacher_cache_mb", "device"}


@dataclass
class AlignConfig:
    teacher: str = "efficientnet_lite0"
    teacher_weights: str | None = None  # None: the registry's default source
    mag: float = 5.0  # the student's magnification
    mode: str = "native"  # "native" (student sees input_px) or "upsample" (resized back to high_px)
    high_mag: float = 20.0  # magnification of the tiles as given to the teacher
    high_px: int = 256  # the teacher's input: 256 px at 20x (tiles of another size are resampled to it)
    tiles: list[str] = field(default_factory=list)  # folders or "dataset[:split]" (see tilesource)
    max_tiles: int | None = None
    epochs: int = 15
    batch_size: int = 32
    lr: float = 1e-4
    lr_decay: float = 0.9  # per epoch
    seed: int = 512
    taps: list[str] | None = None  # None: the encoder's default taps
    tap_weights: list[float] | None = None  # None: upstream [1, 5, 10] in tap order
    pooled_weight: float = 200.0
    upsample_interp: str = "bilinear"
    num_workers: int = 0
    teacher_cache_mb: int = 512  # keep the teacher's (pooled) targets in memory when they fit
    device: str = "auto"  # auto | cpu | cuda[:N] | mps; saved resolved (maga_core.device)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 autocast of both networks; saved resolved

    def validate(self) -> None:
        if self.mode not in ("native", "upsample"):
            raise MagaError(f"mode must be native or upsample, not {self.mode!r}")
        if not 0 < self.mag < self.high_mag:
            raise MagaError(f"student magnification {self.mag} must be below the teacher's {self.high_mag}")
        if self.epochs < 1 or self.batch_size < 1:
            raise MagaError("epochs and batch size must be positive")
        try:
            view_px(self.high_px, self.high_mag, self.mag)
        except ValueError as exc:
            raise MagaError(str(exc)) from None


class TileViews(Dataset):
    """(high-mag view at high_px, low-mag view at the student's px), both uint8, from tile images."""

    def __init__(self, paths: list[Path], high_px: int, low_px: int):
        self.paths, self.high_px, self.low_px = list(paths), high_px, low_px

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        high = resize_patch(read_tile(self.paths[i]), self.high_px)
        return i, torch.from_numpy(high.copy()), torch.from_numpy(resize_patch(high, self.low_px).copy())


class TeacherTargets:
    """The frozen teacher's targets for each tile, already pooled to the student's map sizes.

    The teacher never changes and there is no augmentation, so its outputs are computed once, in tile
    order with a fixed batch size (bit-identical across interrupted and resumed runs), when they fit in
    `budget_mb`; otherwise they are computed per batch."""

    def __init__(self, teacher, student, pipeline: InputPipeline, data: TileViews, taps: list[str],
                 batch_size: int, budget_mb: int, progress: bool, runtime: Runtime = Runtime()):
        self.teacher, self.taps, self.rt = teacher, taps, runtime
        with torch.no_grad():
            shapes = {k: v.shape[1:] for k, v in student.taps(runtime.to(pipeline(
                torch.zeros(1, pipeline.input_px, pipeline.input_px, 3, dtype=torch.uint8))), taps).items()}
        self.shapes = shapes
        per_tile = sum(int(torch.Size(s).numel()) for s in shapes.values()) * 4
        self.cache = None
        if per_tile * len(data) <= budget_mb * 2**20:
            self.cache = {k: torch.empty(len(data), *s, device=runtime.device) for k, s in shapes.items()}
            loader = DataLoader(data, batch_size=batch_size, shuffle=False)
            for idx, high, _ in tqdm(loader, desc="teacher targets", disable=not progress, leave=False):
                for k, v in self.compute(high).items():
                    self.cache[k][idx] = v

    def compute(self, high: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad(), self.rt.autocast():
            x = self.rt.to(self.teacher.transform(high)).contiguous(memory_format=torch.channels_last)
            out = self.teacher.taps(x, self.taps)
            return {k: match_teacher(out[k].float(), torch.empty(1, *self.shapes[k])).contiguous() for k in self.taps}

    def __call__(self, idx: torch.Tensor, high: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.cache is None:
            return self.compute(high)
        return {k: v[idx.to(v.device)] for k, v in self.cache.items()}


def make_pipeline(cfg: AlignConfig, spec) -> InputPipeline:
    return InputPipeline(mode=cfg.mode, input_px=view_px(cfg.high_px, cfg.high_mag, cfg.mag),
                         teacher_px=cfg.high_px, mean=tuple(spec.mean), std=tuple(spec.std),
                         interp=cfg.upsample_interp)


def _usable_tiles(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Decode every tile once; bad files are skipped and reported, not fatal."""
    good, bad = [], []
    for p in paths:
        try:
            read_tile(p)
            good.append(p)
        except MagaError as exc:
            bad.append(str(exc))
    return good, bad


def _config_differences(saved: dict, cfg: AlignConfig) -> list[str]:
    now = to_jsonable(cfg)
    saved = {"precision": "fp32", **saved}  # checkpoints from before the precision option ran fp32
    return [k for k in now if k not in _RESUMABLE_DIFFERENCES and saved.get(k) != now[k]]


def history_paths(out: Path) -> tuple[Path, Path]:
    return out.with_name(out.stem + ".history.csv"), out.with_name(out.stem + ".history.json")


def _write_history(out: Path, history: list[dict]) -> None:
    csv_path, json_path = history_paths(out)
    write_json(history, json_path)
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def train(cfg: AlignConfig, out: str | Path, progress: bool = True,
          on_epoch_end: Callable[[int, dict], None] | None = None) -> Path:
    """Train (or resume) a MAGA student; the checkpoint at `out` is rewritten after every epoch.

    A finished checkpoint with the same configuration is returned as is; one from a different
    configuration is an error rather than silently overwritten."""
    cfg.validate()
    rt = resolve(cfg.device, cfg.precision)
    cfg = dataclasses.replace(cfg, device=rt.device, precision=rt.precision)  # the caller's cfg keeps its key
    out = Path(out)
    saved = None
    if out.exists():
        try:
            saved = torch.load(out, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise MagaError(f"existing checkpoint unreadable ({type(exc).__name__}); delete it to retrain", out) from None
        if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
            raise MagaError("exists and is not a MAGA student checkpoint", out)
        diff = _config_differences(saved["config"], cfg)
        if diff:
            raise MagaError(f"exists with a different configuration ({', '.join(diff)}); choose another output", out)
        if saved["epoch"] >= cfg.epochs:
            return out

    paths, skipped = _usable_tiles(resolve_tiles(cfg.tiles, cfg.max_tiles, cfg.seed))
    if len(paths) < 2:
        raise MagaError(f"need at least 2 readable tiles, found {len(paths)}", ", ".join(cfg.tiles))
    tiles_digest = hashlib.sha256("\n".join(str(p) for p in paths).encode()).hexdigest()
    torch.manual_seed(cfg.seed)
    teacher = build(cfg.teacher, cfg.teacher_weights).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(teacher).eval()  # eval: BatchNorm statistics frozen (see module docstring)
    teacher.to(rt.device, memory_format=torch.channels_last)  # faster frozen forward on CPU
    student.to(rt.device)
    for p in student.parameters():
        p.requires_grad_(True)
    pipeline = make_pipeline(cfg, teacher.spec)
    weights = resolve_weights(teacher.spec, cfg.taps, cfg.tap_weights, cfg.pooled_weight)
    loss_fn = MagaLoss(weights)
    taps = loss_fn.taps

    data = TileViews(paths, cfg.high_px, pipeline.input_px)

    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: cfg.lr_decay ** e)
    history: list[dict] = []
    start = 0
    if saved is not None:
        if saved["tiles"]["sha256"] != tiles_digest:
            raise MagaError("exists but was trained on a different tile list; choose another output", out)
        student.load_state_dict(saved["student"])
        optimizer.load_state_dict(saved["optimizer"])  # state follows the parameters' device
        scheduler.load_state_dict(saved["scheduler"])
        history, start = list(saved["history"]), int(saved["epoch"])

    save_config(cfg, out.parent, name=out.stem + ".config.json")
    targets = TeacherTargets(teacher, student, pipeline, data, taps, cfg.batch_size, cfg.teacher_cache_mb, progress,
                             rt)
    for epoch in range(start, cfg.epochs):
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.seed * 1009 + epoch))
        loader = DataLoader(data, batch_size=cfg.batch_size, sampler=order.tolist(), num_workers=cfg.num_workers,
                            pin_memory=rt.pin_memory)
        lr = optimizer.param_groups[0]["lr"]
        sums = {"loss": 0.0, **{t: 0.0 for t in taps}}
        t0 = time.perf_counter()
        bar = tqdm(loader, desc=f"MAGA {cfg.mode} {cfg.mag:g}x epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress, leave=False)
        for idx, high, low in bar:
            with rt.autocast():
                pred = student.taps(rt.to(pipeline(low)), taps)
            loss, parts = loss_fn({k: v.float() for k, v in pred.items()}, targets(idx, high))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = len(high)
            sums["loss"] += float(loss.detach()) * n
            for t in taps:
                sums[t] += parts[t] * n
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        scheduler.step()
        row = {"epoch": epoch + 1, "lr": lr, "seconds": round(time.perf_counter() - t0, 3),
               **{("loss" if k == "loss" else f"l1/{k}"): v / len(data) for k, v in sums.items()}}
        history.append(row)
        state = {
            "format": CHECKPOINT_FORMAT, "config": to_jsonable(cfg), "teacher": teacher.identity(),
            "loss_weights": weights, "pipeline": pipeline_dict(pipeline), "epoch": epoch + 1,
            "finished": epoch + 1 >= cfg.epochs, "history": history,
            "tiles": {"n": len(paths), "sha256": tiles_digest, "skipped": skipped},
            "student": {k: v.cpu() for k, v in student.state_dict().items()}, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "torch": str(torch.__version__),
        }
        with atomic_path(out) as tmp:
            torch.save(state, tmp)
        _write_history(out, history)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)
    if skipped:
        print(f"MAGA: skipped {len(skipped)} unreadable tiles: " + "; ".join(skipped[:5]))
    return out


def save_summary(students: dict[str, Any]) -> Path:
    """Hand the MAGA training settings (chapter 02's students, from load_student) to the reproduction
    summary (chapter 09), beside the paper's, with what differs."""
    from maga_core import summary

    first = next(iter(students.values()))
    cfg = first.config
    high_px = int(cfg["high_px"])
    taps = ", ".join(f"{t} x{w:g}" for t, w in first.loss_weights.items())
    tiles = "; ".join(f"{mode}: {s.n_tiles} tiles, {len(s.history)} epochs" for mode, s in students.items())
    figures = {"maga_training": {
        "patch_px": {f"x{m}": round(high_px * m / cfg["high_mag"]) for m in (20, 10, 5)},
        "optimizer": {"name": "adam", "lr": cfg["lr"], "decay": "exponential", "decay_coefficient": cfg["lr_decay"]},
        "loss": f"weighted sum over taps of L1(teacher, student): {taps} ({cfg['teacher']})"}}
    return summary.save_results(
        "02_maga_training", figures=figures,
        notes={"maga_training": f"students of this build ({tiles}) on {', '.join(cfg['tiles'])}",
               "maga_training.patches": f"the paper aligns on millions of cohort patches; this build's students "
                                        f"saw {tiles}",
               "maga_training.optimizer.decay": "lr x decay_coefficient per epoch (the public code: 0.95 per epoch)",
               "maga_training.loss": "the public code weights its blocks [1, 5, 10] and the pooled output 200; "
                                     "EfficientNet-Lite taps stand in for the ResNet50 blocks"})


__all__ = ["AlignConfig", "TeacherTargets", "TileViews", "history_paths", "make_pipeline", "train"]
