"""MAGA training: a frozen teacher at high magnification teaches a copy of itself to produce, from the
low-magnification view of the same tissue, the teacher's block outputs and pooled feature.

Choices (recorded in every checkpoint):
- Teacher frozen and in eval mode (upstream left its BatchNorm statistics updating).
- Student = copy of the teacher, kept in eval mode too: its BatchNorm running statistics stay frozen at the
  teacher's (the affine parameters still train). Low-magnification inputs shift activation statistics,
  and re-estimating them from a few hundred tiles is noisier than letting the weights adapt.
- Adam, lr 1e-4 multiplied by 0.95 after every epoch for 30 epochs (upstream's decay; the paper says 0.9 and
  15 epochs was our previous default): chosen on validation folds of the train tiles by `maga bench
  maga-select` (maga.alignment.select), never on the test tiles. Each tile also in its three mirror images
  (`augment="flips"`, the default; upstream has none).
- Deterministic on CPU: the tile order of epoch e comes from a generator seeded by (seed, e), so a resumed
  run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from maga_core.config import atomic_path, save_config, to_jsonable, torch_save, write_json
from maga_core.device import Runtime, resolve
from maga_core.encoders import build
from maga_core.errors import MagaError
from maga_core.align.loss import MagaLoss, match_teacher, resolve_weights
from maga_core.align.student import CHECKPOINT_FORMAT, InputPipeline, pipeline_dict
from maga_core.align.tilesource import read_tile, resolve_tiles, tiles_mpp
from maga_core.align.views import view_at_mag, views_on_device
from maga_core.slides import patch_px_for_mag

# Fields that may differ between an interrupted run and its resumption.
_RESUMABLE_DIFFERENCES = {"epochs", "num_workers", "teacher_cache_mb", "device"}


# Symmetries of a tile as (mirror left-right, mirror top-bottom, transpose): the student sees the transformed
# 5x view and the teacher's targets are computed on the same transform of the 20x view (once per tile and
# transform). Measured with `maga bench maga`: mirroring the teacher's maps of the untransformed view
# instead recovered less. "dihedral" adds the four transposed images (rotations by 90 degrees).
_MIRRORS = ((False, False), (True, False), (False, True), (True, True))
AUGMENTS = {"none": ((False, False, False),),
            "flips": tuple((*m, False) for m in _MIRRORS),
            "dihedral": tuple((*m, t) for t in (False, True) for m in _MIRRORS)}


def _transform(view: np.ndarray, how: tuple[bool, bool, bool]) -> np.ndarray:
    """An HxWx3 view mirrored and/or transposed; always a writable copy (decoded images are read-only)."""
    if how[2]:
        view = view.transpose(1, 0, 2)
    if how[0]:
        view = view[:, ::-1]
    if how[1]:
        view = view[::-1]
    return np.array(view)


@dataclass
class AlignConfig:
    teacher: str = "efficientnet_lite0"
    teacher_weights: str | None = None  # None: the registry's default source
    mag: float = 5.0  # the student's magnification
    mode: str = "native"  # "native" (student sees the patch at its size) or "upsample" (resized to the teacher's)
    high_mag: float = 20.0  # the teacher's magnification
    tiles: list[str] = field(default_factory=list)  # folders or "dataset[:split]" (see tilesource)
    tile_mpp: float | None = None  # the tiles' um/px; None: from the datasets' manifests
    max_tiles: int | None = None
    epochs: int = 30  # 30 epochs at x0.95: chosen by maga.alignment.select (validation folds of the train tiles)
    batch_size: int = 32
    lr: float = 1e-4
    lr_decay: float = 0.95  # per epoch
    seed: int = 512
    taps: list[str] | None = None  # None: the encoder's default taps
    tap_weights: list[float] | None = None  # None: upstream [1, 5, 10] in tap order
    pooled_weight: float | None = None  # None: the encoder's default
    augment: str = "flips"
    upsample_interp: str = "bilinear"
    num_workers: int = 0
    teacher_cache_mb: int = 1024  # keep the teacher's (pooled) targets in memory when they fit
    device: str = "auto"  # auto | cpu | cuda[:N] | mps; saved resolved (maga_core.device)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 autocast of both networks; saved resolved

    def validate(self) -> None:
        if self.mode not in ("native", "upsample"):
            raise MagaError(f"mode must be native or upsample, not {self.mode!r}")
        if not 0 < self.mag < self.high_mag:
            raise MagaError(f"student magnification {self.mag} must be below the teacher's {self.high_mag}")
        if self.epochs < 1 or self.batch_size < 1:
            raise MagaError("epochs and batch size must be positive")
        if self.augment not in AUGMENTS:
            raise MagaError(f"augment must be one of {', '.join(AUGMENTS)}, not {self.augment!r}")


class TileViews(Dataset):
    """(index, transform, 20x view, low-magnification view) of tile images, both uint8 and mirrored by the
    transform, made by `views.view_at_mag` exactly as `maga extract` views a tile folder. Tiles of one size
    give views of one size."""

    def __init__(self, paths: list[Path], tile_mpp: float, high_mag: float, mag: float,
                 transforms: tuple[tuple[bool, bool, bool], ...] = AUGMENTS["none"],
                 decoded: list[tuple[np.ndarray, np.ndarray]] | None = None):
        self.paths, self.tile_mpp, self.high_mag, self.mag = list(paths), tile_mpp, high_mag, mag
        self.transforms = transforms
        self.decoded = decoded  # (20x view, low view) per tile, made once (`decode_views`); None: per item

    def __len__(self) -> int:
        return len(self.paths)

    def views(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self.decoded is not None:
            return self.decoded[i]
        return tile_views(read_tile(self.paths[i]), self.tile_mpp, self.high_mag, self.mag)

    def __getitem__(self, item: tuple[int, int]):
        i, t = item
        high, low = self.views(i)
        how = self.transforms[t]
        return i, t, torch.from_numpy(_transform(high, how)), torch.from_numpy(_transform(low, how))


def same_size_batches(sizes: list[int], batch_size: int, n_transforms: int, generator: torch.Generator
                      ) -> list[list[tuple[int, int]]]:
    """Shuffled batches of (tile, transform) whose tiles share one size (views of one size stack)."""
    batches = []
    for size in sorted(set(sizes)):
        idx = torch.tensor([i for i, s in enumerate(sizes) if s == size])
        idx = idx[torch.randperm(len(idx), generator=generator)]
        t = torch.randint(n_transforms, (len(idx),), generator=generator)
        pairs = list(zip(idx.tolist(), t.tolist()))
        batches += [pairs[k:k + batch_size] for k in range(0, len(pairs), batch_size)]
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[k] for k in order]


def _collate(items):
    idx, t, high, low = zip(*items)
    return torch.tensor(idx), torch.tensor(t), torch.stack(high), torch.stack(low)


def view_batch(data: TileViews, tiles: list[int], transform: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 20x and low-magnification views [B,h,w,3] of some tiles, stacked as a training batch."""
    _, _, high, low = _collate([data[(i, transform)] for i in tiles])
    return high, low


def frozen_teacher(name: str, weights: str | None = None):
    """The teacher: built from the registry, in eval mode (BatchNorm statistics fixed), no gradients."""
    teacher = build(name, weights).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def make_student(teacher):
    """A trainable copy of the teacher, kept in eval mode (its BatchNorm running statistics stay frozen)."""
    student = copy.deepcopy(teacher).eval()
    for p in student.parameters():
        p.requires_grad_(True)
    return student


def make_optimizer(student, cfg: AlignConfig):
    """Adam at `cfg.lr`, multiplied by `cfg.lr_decay` after every epoch."""
    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: cfg.lr_decay ** e)


def tap_shapes(student, pipeline: InputPipeline, low_hw, taps: list[str], rt: Runtime = Runtime()
               ) -> dict[str, torch.Size]:
    """The student's tap shapes for a low-magnification view of this size (the teacher targets' shapes)."""
    with torch.no_grad():
        zeros = rt.to(pipeline(torch.zeros(1, *(int(v) for v in low_hw), 3, dtype=torch.uint8)))
        return {k: v.shape[1:] for k, v in student.taps(zeros, taps).items()}


def teacher_targets(teacher, high: torch.Tensor, shapes: dict[str, torch.Size], rt: Runtime = Runtime()
                    ) -> dict[str, torch.Tensor]:
    """The frozen teacher's tap outputs on uint8 20x views [B,H,W,3], pooled to the student's map sizes."""
    with torch.no_grad(), rt.autocast():
        x = rt.to(teacher.transform(high)).contiguous(memory_format=torch.channels_last)
        out = teacher.taps(x, list(shapes))
        return {k: match_teacher(out[k].float(), torch.empty(1, *s)).contiguous() for k, s in shapes.items()}


def batch_loss(student, pipeline: InputPipeline, loss_fn: MagaLoss, low: torch.Tensor,
               targets: dict[str, torch.Tensor], rt: Runtime = Runtime()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The MAGA loss of the student on uint8 low-magnification views [B,h,w,3] against the teacher's
    targets: the weighted total and each tap's unweighted L1."""
    with rt.autocast():
        pred = student.taps(pipeline(rt.to(low)), loss_fn.taps)  # uint8 to the device, normalised there
    return loss_fn({k: v.float() for k, v in pred.items()}, targets)


def train_step(student, pipeline: InputPipeline, loss_fn: MagaLoss, optimizer, low: torch.Tensor,
               targets: dict[str, torch.Tensor], rt: Runtime = Runtime()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimiser step on one batch; returns the batch's loss (and per-tap L1) before the step, as
    detached device tensors (no host sync per step)."""
    loss, parts = batch_loss(student, pipeline, loss_fn, low, targets, rt)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), parts


class TeacherTargets:
    """The frozen teacher's targets for each (tile, mirror image), pooled to the student's map sizes.

    The teacher never changes, so its outputs are computed once, `batch` views at a time in a fixed order
    (bit-identical across interrupted and resumed runs), when they fit in `budget_mb`; otherwise per
    training batch. One view at a time ran at ~90 views/s on an H200 (H200 run 1)."""

    def __init__(self, teacher, student, pipeline: InputPipeline, data: TileViews, taps: list[str],
                 budget_mb: int, progress: bool, runtime: Runtime = Runtime(), batch: int = 256):
        self.teacher, self.student, self.pipeline, self.taps, self.rt = teacher, student, pipeline, taps, runtime
        self.transforms = data.transforms
        self._shapes: dict[tuple[int, int], dict[str, torch.Size]] = {}
        self.cache: dict[tuple[int, int], dict[str, torch.Tensor]] | None = None
        high, low = data.views(0)
        per_view = sum(s.numel() for s in self.shapes(low.shape[:2]).values()) * 4
        items = [(i, t) for i in range(len(data)) for t in range(len(self.transforms))]
        if per_view * len(items) <= budget_mb * 2**20:
            self.cache = {}
            by_size: dict[tuple, list] = {}
            for item in items:
                by_size.setdefault(data.views(item[0])[1].shape[:2], []).append(item)
            with tqdm(total=len(items), desc="teacher targets", disable=not progress, leave=False) as bar:
                for low_hw, group in by_size.items():
                    for k in range(0, len(group), batch):
                        chunk = group[k:k + batch]
                        high = torch.stack([data[item][2] for item in chunk])
                        out = self.compute(runtime.to(high.pin_memory() if runtime.pin_memory else high), low_hw)
                        for r, item in enumerate(chunk):
                            self.cache[item] = {name: v[r] for name, v in out.items()}
                        bar.update(len(chunk))

    def shapes(self, low_hw) -> dict[str, torch.Size]:
        """The student's tap shapes for a view of this size (also the teacher targets' shapes)."""
        key = tuple(int(v) for v in low_hw)
        if key not in self._shapes:
            self._shapes[key] = tap_shapes(self.student, self.pipeline, key, self.taps, self.rt)
        return self._shapes[key]

    def compute(self, high: torch.Tensor, low_hw) -> dict[str, torch.Tensor]:
        return teacher_targets(self.teacher, high, self.shapes(low_hw), self.rt)

    def __call__(self, idx: torch.Tensor, t: torch.Tensor, high: torch.Tensor, low: torch.Tensor):
        if self.cache is None:
            return self.compute(high, low.shape[1:3])
        rows = [self.cache[(int(i), int(j))] for i, j in zip(idx, t)]
        return {k: torch.stack([r[k] for r in rows]) for k in self.taps}


def make_pipeline(cfg: AlignConfig, spec) -> InputPipeline:
    return InputPipeline(mode=cfg.mode, input_px=patch_px_for_mag(cfg.mag), teacher_px=patch_px_for_mag(cfg.high_mag),
                         mean=tuple(spec.mean), std=tuple(spec.std), interp=cfg.upsample_interp)


def tile_views(tile: np.ndarray, tile_mpp: float, high_mag: float, mag: float) -> tuple[np.ndarray, np.ndarray]:
    """(teacher's view, student's view) of one decoded tile, by the resampling inference uses."""
    return view_at_mag(tile, tile_mpp, high_mag), view_at_mag(tile, tile_mpp, mag)


def decode_views(paths: list[Path], tile_mpp: float, high_mag: float, mag: float, budget_mb: int = 4096,
                 device: torch.device | str | None = None
                 ) -> tuple[list[Path], list[int], list[str], list[tuple[np.ndarray, np.ndarray]] | None]:
    """Decode every tile once, on every core (PIL releases the GIL): the readable ones, their (square)
    sizes, which batch views of one size together, the skipped files' errors (bad files are reported,
    not fatal), and both uint8 views of each tile held in memory when they fit in `budget_mb` (then no
    epoch decodes or resamples again: on a GPU, decoding per step starves the network). With a `device`
    the views are made there, 256 tiles at a time (`views.views_on_device`, within one grey level of
    the host's `view_at_mag`), instead of one tile at a time on a host core."""
    def one(p: Path):
        try:
            tile = read_tile(p)
        except MagaError as exc:
            return p, str(exc), None
        return p, tile.shape[0], tile if device is not None else tile_views(tile, tile_mpp, high_mag, mag)

    done = []
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for k in range(0, len(paths), 256):  # a chunk at a time: the full-size tiles are never all in memory
            chunk = list(pool.map(one, paths[k:k + 256]))
            if device is not None:
                good = [r for r, (_, _, v) in enumerate(chunk) if v is not None]
                made = _views_on_device([chunk[r][2] for r in good], tile_mpp, high_mag, mag, torch.device(device))
                for r, v in zip(good, made):
                    chunk[r] = (*chunk[r][:2], v)
            done += chunk
    good = [(p, size, v) for p, size, v in done if v is not None]
    bad = [err for _, err, v in done if v is None]
    views = [v for _, _, v in good]
    nbytes = sum(h.nbytes + lo.nbytes for h, lo in views)
    return [p for p, _, _ in good], [size for _, size, _ in good], bad, views if nbytes <= budget_mb * 2**20 else None


def _views_on_device(tiles: list[np.ndarray], tile_mpp: float, high_mag: float, mag: float, device: torch.device
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(20x view, low view) of each decoded tile, made on `device` for the tiles of one shape at once."""
    views: list = [None] * len(tiles)
    by_shape: dict[tuple, list[int]] = {}
    for i, tile in enumerate(tiles):
        by_shape.setdefault(tile.shape, []).append(i)
    for group in by_shape.values():
        x = torch.from_numpy(np.stack([tiles[i] for i in group])).to(device)
        high = views_on_device(x, tile_mpp, high_mag).cpu().numpy()
        low = views_on_device(x, tile_mpp, mag).cpu().numpy()
        for r, i in enumerate(group):
            views[i] = (high[r], low[r])
    return views


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

    tile_mpp = tiles_mpp(cfg.tiles, cfg.tile_mpp)
    paths, sizes, skipped, decoded = decode_views(resolve_tiles(cfg.tiles, cfg.max_tiles, cfg.seed), tile_mpp,
                                                  cfg.high_mag, cfg.mag, device=None if rt.device == "cpu" else rt.device)
    if len(paths) < 2:
        raise MagaError(f"need at least 2 readable tiles, found {len(paths)}", ", ".join(cfg.tiles))
    tiles_digest = hashlib.sha256("\n".join(str(p) for p in paths).encode()).hexdigest()
    torch.manual_seed(cfg.seed)
    teacher = frozen_teacher(cfg.teacher, cfg.teacher_weights)
    student = make_student(teacher)  # eval: BatchNorm statistics frozen (see module docstring)
    teacher.to(rt.device, memory_format=torch.channels_last)  # faster frozen forward on CPU
    student.to(rt.device)
    pipeline = make_pipeline(cfg, teacher.spec)
    weights = resolve_weights(teacher.spec, cfg.taps, cfg.tap_weights, cfg.pooled_weight)
    loss_fn = MagaLoss(weights)
    taps = loss_fn.taps

    data = TileViews(paths, tile_mpp, cfg.high_mag, cfg.mag, AUGMENTS[cfg.augment], decoded)

    optimizer, scheduler = make_optimizer(student, cfg)
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
    targets = TeacherTargets(teacher, student, pipeline, data, taps, cfg.teacher_cache_mb, progress, rt)
    for epoch in range(start, cfg.epochs):
        batches = same_size_batches(sizes, cfg.batch_size, len(data.transforms),
                                    torch.Generator().manual_seed(cfg.seed * 1009 + epoch))
        loader = DataLoader(data, batch_sampler=batches, collate_fn=_collate, num_workers=cfg.num_workers,
                            pin_memory=rt.pin_memory)
        lr = optimizer.param_groups[0]["lr"]
        sums = {"loss": torch.zeros((), device=rt.device), **{t: torch.zeros((), device=rt.device) for t in taps}}
        t0 = time.perf_counter()
        bar = tqdm(loader, desc=f"MAGA {cfg.mode} {cfg.mag:g}x epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress, leave=False)
        for idx, t, high, low in bar:
            loss, parts = train_step(student, pipeline, loss_fn, optimizer, low, targets(idx, t, high, low), rt)
            n = len(high)  # sums stay on the device: no host sync per step (it stalls a GPU's queue)
            sums["loss"] += loss.float() * n
            for t in taps:
                sums[t] += parts[t].float() * n
        scheduler.step()
        means = {("loss" if k == "loss" else f"l1/{k}"): float(v) / len(data) for k, v in sums.items()}
        row = {"epoch": epoch + 1, "lr": lr, "seconds": round(time.perf_counter() - t0, 3), **means}
        history.append(row)
        state = {
            "format": CHECKPOINT_FORMAT, "config": to_jsonable(cfg), "teacher": teacher.identity(),
            "loss_weights": weights, "pipeline": pipeline_dict(pipeline), "epoch": epoch + 1,
            "finished": epoch + 1 >= cfg.epochs, "history": history,
            "tiles": {"n": len(paths), "sha256": tiles_digest, "skipped": skipped},
            "student": {k: v.cpu() for k, v in student.state_dict().items()}, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "torch": str(torch.__version__),
        }
        torch_save(state, out)
        _write_history(out, history)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)
    if skipped:
        print(f"MAGA: skipped {len(skipped)} unreadable tiles: " + "; ".join(skipped[:5]))
    return out


__all__ = ["AlignConfig", "TeacherTargets", "TileViews", "batch_loss", "frozen_teacher", "history_paths",
           "make_optimizer", "make_pipeline", "make_student", "tap_shapes", "teacher_targets", "train",
           "train_step", "view_batch"]
