"""The whole `maga extract` job: what the input holds and where each output goes (`plan`), resume (finished
outputs are skipped), shard by torch.distributed rank (each rank writes only its own slides), and skip and
report bad inputs (`extract_report.json`); the extraction itself is `maga.extract`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tqdm.auto import tqdm

from maga_core.config import save_config, write_json
from maga_core.data.features import INPUT_KINDS
from maga_core.device import resolve
from maga_core.errors import MagaError, output_error
from maga.extract import (EXTRACT_TISSUE_MPP, SLIDE_SUFFIXES, TILE_SUFFIXES, FeatureModel, SlideResult, extract_slides,
                          extract_tiles, find_files, load_model, upsampled)
from maga.extract_report import BatchReport, one_line_cause, report_dict

log = logging.getLogger(__name__)

H5_SUFFIXES = {".h5", ".hdf5"}
REPORT = "extract_report.json"


@dataclass
class ExtractConfig:
    encoder: str
    input: str
    out: str
    mag: float | None = None  # None: the student's input magnification (an encoder needs one)
    student: str | None = None  # MAGA student checkpoint; its input pipeline replaces the encoder's
    upsample_px: int | None = None  # encoder only: patches resized (bilinear) to this side first, e.g. 5x -> 256 px
    weights: str | None = None  # encoder weights: None default source, a path, or "random"
    mpp: float | None = None  # slides: level-0 MPP override; tiles: the tiles' MPP (required)
    input_kind: str = "auto"  # auto | slides | tiles
    batch_size: int | None = None  # None: auto_batch_size (4 at 256 px on CPU, 256 on CUDA, by pixel count)
    num_workers: int | None = None  # None: slide_decode_threads for slides, default_workers for tile folders
    channels_last: bool = True
    min_tissue: float = 0.5
    tissue_mpp: float = EXTRACT_TISSUE_MPP  # tissue mask thumbnail scale (slides.TissueConfig.thumb_mpp)
    progress: bool = True
    device: str = "auto"  # auto | cpu | cuda[:N] | mps; saved resolved (maga_core.device)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (autocast); saved resolved


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) of torch.distributed, else of torchrun's environment, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _input_kind(src: Path, kind: str) -> str:
    """'slide', 'slides' or 'tiles' for an input path."""
    if kind not in INPUT_KINDS:
        raise MagaError(f"--kind must be one of {', '.join(INPUT_KINDS)}, got {kind!r}")
    if not src.exists():
        raise MagaError("input not found", src)
    if src.is_file():
        if kind == "tiles":
            raise MagaError("--kind tiles needs a folder of tile images", src)
        return "slide"
    if kind != "auto":
        return kind
    if find_files(src, SLIDE_SUFFIXES):
        return "slides"
    if find_files(src, TILE_SUFFIXES):
        return "tiles"
    raise MagaError(f"no slides ({', '.join(sorted(SLIDE_SUFFIXES))}) or tile images found", src)


def plan(cfg: ExtractConfig) -> tuple[str, list[tuple[Path, Path]], Path]:
    """(kind, [(input, output)] for every item of the whole job, output folder)."""
    src, out = Path(cfg.input), Path(cfg.out)
    kind = _input_kind(src, cfg.input_kind)
    single = out.suffix.lower() in H5_SUFFIXES
    if kind == "slides" and single:
        raise MagaError("a folder of slides needs an output folder, not a .h5 file", out)
    if kind == "slides":
        items = [(p, (out / p.relative_to(src)).with_suffix(".h5")) for p in find_files(src, SLIDE_SUFFIXES)]
    else:
        items = [(src, out if single else out / f"{src.stem if kind == 'slide' else src.name}.h5")]
    return kind, items, out.parent if single else out


def _tiles_outcomes(todo: list[tuple[Path, Path]], model: FeatureModel, cfg: ExtractConfig
                    ) -> Iterator[tuple[Path, SlideResult | Exception]]:
    """`extract_tiles` per tile folder, as (folder, result or exception) like `extract_slides`."""
    for src, dst in todo:
        try:
            yield src, extract_tiles(src, model, dst, cfg.mpp, cfg.batch_size, cfg.num_workers, cfg.progress)
        except Exception as exc:  # noqa: BLE001 - reported by extract_batch
            yield src, exc


def extract_batch(cfg: ExtractConfig) -> BatchReport:
    """The whole `maga extract` job for this rank: resume, shard, skip-and-report failures."""
    if cfg.batch_size is not None and cfg.batch_size < 1 or (cfg.num_workers or 0) < 0:
        raise MagaError(f"batch size must be >= 1 and workers >= 0 (got {cfg.batch_size}, {cfg.num_workers})")
    kind, items, out_dir = plan(cfg)
    if kind == "tiles" and cfg.mpp is None:
        raise MagaError("a tile folder needs --mpp (the tiles' microns per pixel, e.g. 0.5 for 20x)", cfg.input)
    rank, world = dist_rank_world()
    report = BatchReport(rank, world)
    mine = items[rank::world]
    todo = []
    for src, dst in mine:
        if dst.is_file():
            report.skipped.append(str(dst))
        else:
            todo.append((src, dst))
    outcomes: Iterator[tuple[Path, SlideResult | Exception]] = iter(())
    if todo:
        rt = resolve(cfg.device, cfg.precision)
        model = load_model(cfg.encoder, cfg.mag, cfg.student, cfg.weights, cfg.channels_last, rt)
        if cfg.upsample_px:
            model = upsampled(model, cfg.upsample_px)
        save_config(dataclasses.replace(cfg, device=rt.device, precision=rt.precision), out_dir)
        outcomes = (_tiles_outcomes(todo, model, cfg) if kind == "tiles" else
                    extract_slides(todo, model, cfg.mpp, cfg.batch_size, cfg.num_workers, cfg.min_tissue,
                                   cfg.progress, tissue_mpp=cfg.tissue_mpp))
    for (src, dst), (_, res) in zip(todo, tqdm(outcomes, total=len(todo), desc="slides", unit="slide",
                                               disable=not cfg.progress or len(todo) < 2)):
        if isinstance(res, Exception):  # one bad slide must not stop the batch ...
            if (stop := output_error(res, dst.parent)) is not None:  # ... but a full or read-only output folder does
                raise stop from None
            report.failed[str(src)] = one_line_cause(res, src)
            log.warning("skipped %s", report.failed[str(src)])
        else:
            report.done.append(res)
            log.info("%s: %d patches in %.1f s -> %s", src, res.n_patches, res.seconds, dst)
    write_json({"kind": kind, **report_dict(report)},
               out_dir / (REPORT if world == 1 else f"extract_report.rank{rank}.json"))
    return report
