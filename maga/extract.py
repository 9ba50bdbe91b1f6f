"""Feature extraction: a slide or slides (one HDF5 each) or a folder of tiles (one HDF5), with an encoder
at a magnification or a MAGA student at its own input magnification (`maga.extract_job` runs the whole
`maga extract` job around it: plan, resume, shard, report).

Reading overlaps compute: a slide's patches come as uint8 batches from a reader thread that decodes the
slide's own JPEG tiles (`slide_stream`, `slides.TileReader`; tile folders use DataLoader workers) while
this thread normalises them on the device and runs the network under inference mode, channels-last;
features stream into the HDF5 (renamed into place only when whole), so memory stays at a few batches on
a gigapixel slide.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from maga_core.align import load_student
from maga_core.align.student import InputPipeline
from maga_core.align.views import view_at_mag
from maga_core.data.features import feature_writer
from maga_core.device import Runtime, inference
from maga_core.encoders import build
from maga_core.errors import MagaError
from maga_core.slide_stream import StageTimes, stream_patches
from maga_core.slides import TissueConfig, aligned_grid, detect_tissue, open_slide, patch_px_for_mag, read_patch
from maga_core.slides.patch_batch import read_patches
from maga_core.slides.tile_reader import decode_threads, fast_reader

# Files a slide folder is searched for (OpenSlide formats and pyramidal TIFF). Plain images are tiles.
SLIDE_SUFFIXES = {".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".svslide", ".bif", ".tif", ".tiff"}
TILE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
EXTRACT_TISSUE_MPP = 8.0  # um/px of the tissue-mask thumbnail: a small fixed cost per slide


def default_workers() -> int:
    """Tile folders read on this many DataLoader processes (every core: decoding releases the GIL and is
    short next to the network)."""
    return decode_threads()


def slide_decode_threads(runtime: Runtime) -> int:
    """Threads that decode a slide's tiles: every core when the network runs on an accelerator (the data
    path is then the bottleneck), one when it runs on the CPU, where torch's threads already use every core
    and one decode thread keeps well ahead of the network (`maga bench extract --ideas` times twice as many:
    `decode_threads_x2` in results/bench_extract.json)."""
    return 1 if runtime.kind == "cpu" else decode_threads()


@dataclass
class FeatureModel:
    """A network plus exactly the input it expects: magnification, patch side and preprocessing."""

    module: torch.nn.Module
    preprocess: Callable[[np.ndarray], torch.Tensor]  # uint8 [B,H,W,3] -> normalized [B,3,h,w]
    mag: float
    patch_px: int
    encoder: str
    student_sha256: str = ""
    channels_last: bool = True
    runtime: Runtime = field(default_factory=Runtime)

    def __post_init__(self) -> None:
        if self.runtime.cuda:
            torch.backends.cudnn.benchmark = True  # batches have one shape (slide_stream pads the last)
        self.module.eval().to(self.runtime.device)
        if self.channels_last:
            self.module.to(memory_format=torch.channels_last)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a preprocessed batch (on any device), as float32 on the model's device."""
        with inference(self.runtime):
            x = self.runtime.to(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return self.module(x).float()

    @property
    def dim(self) -> int:
        return int(self.module.dim)

    def attrs(self) -> dict[str, Any]:
        return {"magnification": float(self.mag), "patch_px": int(self.patch_px), "encoder": self.encoder,
                "student_sha256": self.student_sha256, "device": self.runtime.device,
                "precision": self.runtime.precision}


def load_model(encoder: str, mag: float | None = None, student: str | Path | None = None,
               weights: str | None = None, channels_last: bool = True,
               runtime: Runtime | None = None) -> FeatureModel:
    """An encoder at `mag` (patches of the standard 128 um square, fed at their native size), or a
    MAGA student at its training magnification with its training input pipeline."""
    if student is not None:
        net = load_student(student)
        teacher = (getattr(net, "teacher", None) or {}).get("name", net.spec.name)
        if encoder not in (teacher, net.spec.name):
            raise MagaError(f"student was trained from {teacher!r}, not --encoder {encoder!r}", student)
        if mag is not None and float(mag) != float(net.input_mag):
            raise MagaError(f"student takes {net.input_mag:g}x patches, not --mag {mag:g}", student)
        return FeatureModel(net, net.prepare, float(net.input_mag), int(net.input_px), encoder,
                            net.sha256, channels_last, runtime or Runtime())
    if mag is None:
        raise MagaError("--mag is required without --student")

    net = build(encoder, weights=weights)
    return FeatureModel(net, net.transform, float(mag), patch_px_for_mag(float(mag)), encoder, "", channels_last,
                        runtime or Runtime())


def upsampled(model: FeatureModel, px: int) -> FeatureModel:
    """The encoder fed its patches resized to `px` (the fair no-MAGA baseline at low magnification: the
    teacher at the input size it was trained for), with the same resize as an upsample-mode student."""
    if model.student_sha256:
        raise MagaError("upsample_px applies to a plain encoder, not to a MAGA student")
    spec = model.module.spec
    pipe = InputPipeline("upsample", model.patch_px, int(px), tuple(spec.mean), tuple(spec.std))
    return dataclasses.replace(model, preprocess=pipe)


def auto_batch_size(patch_px: int, cuda: bool = False) -> int:
    """Same pixels per batch at every magnification, so small patches do not starve the network: 4 at
    256 px on CPU (a CPU is no faster with larger batches, and lite0's activations at batch 32 took peak
    RSS from 0.9 to 1.5 GB), 256 at 256 px on CUDA (a GPU needs large batches to be busy; H200 run 1
    measured 3,699 tiles/s at batch 32 vs 21,046 at 256), capped at 512 (CPU) / 2048 (CUDA) at 64 px."""
    base, cap = (256, 2048) if cuda else (4, 512)
    return int(min(cap, max(1, round(base * (256 / patch_px) ** 2))))


class SlidePatches(Dataset):
    """Patches of one slide at one magnification, read lazily: each DataLoader worker opens its own
    reader. A batch is read in one call (`read_rows`, `slides.read_patches`: tiles decoded once, in
    parallel); `fast=False` reads through the reader of record alone. Same pixels either way."""

    def __init__(self, path: Path, coords: np.ndarray, mag: float, patch_px: int, mpp: float | None = None,
                 fast: bool = True):
        self.path, self.coords, self.mag, self.patch_px, self.mpp = Path(path), coords, mag, patch_px, mpp
        self.fast = fast
        self._reader = None

    def __len__(self) -> int:
        return len(self.coords)

    def _open(self):
        if self._reader is None:
            reader = open_slide(self.path, mpp=self.mpp)
            self._reader = fast_reader(reader) if self.fast else reader
        return self._reader

    def __getitem__(self, i: int) -> np.ndarray:
        x, y = self.coords[i]
        return read_patch(self._open(), (float(x), float(y)), self.mag, self.patch_px)

    def read_rows(self, idx: Sequence[int]) -> list[np.ndarray]:
        return list(read_patches(self._open(), self.coords[np.asarray(idx, dtype=np.int64)], self.mag,
                                 self.patch_px))


class TileImages(Dataset):
    """Tile images at their MPP, viewed at the target magnification exactly as MAGA training views them."""

    def __init__(self, paths: Sequence[Path], tile_mpp: float, mag: float):
        self.paths, self.tile_mpp, self.mag = list(paths), float(tile_mpp), float(mag)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        try:
            with Image.open(self.paths[i]) as im:
                tile = np.asarray(im.convert("RGB"))
        except OSError as exc:
            raise MagaError(f"cannot read tile image ({exc})", self.paths[i]) from None
        return view_at_mag(tile, self.tile_mpp, self.mag)


class Collate:
    """Runs in the worker: groups patches by shape, stacks and preprocesses each group."""

    def __init__(self, preprocess: Callable[[np.ndarray], torch.Tensor]):
        self.preprocess = preprocess

    def __call__(self, items: list[tuple[int, np.ndarray]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        groups: dict[tuple[int, ...], list[int]] = {}
        for k, (_, patch) in enumerate(items):
            groups.setdefault(patch.shape, []).append(k)
        return [(torch.tensor([items[k][0] for k in ks]), self.preprocess(np.stack([items[k][1] for k in ks])))
                for ks in groups.values()]


class _Indexed(Dataset):
    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[int, np.ndarray]:
        return i, self.base[i]

    def __getitems__(self, idx: list[int]) -> list[tuple[int, np.ndarray]]:
        """A whole batch at once (DataLoader's batched fetch), so a slide can be read a row at a time."""
        read = getattr(self.base, "read_rows", None)
        return list(zip(idx, read(idx) if read else [self.base[i] for i in idx]))


def embed_into(dataset: Dataset, model: FeatureModel, put: Callable[[np.ndarray, np.ndarray], None],
               batch_size: int | None = None, num_workers: int | None = None, desc: str = "patches",
               progress: bool = True) -> None:
    """Run the network over every item of `dataset` (uint8 HxWx3 patches); `put(indices, features)`
    receives each batch, so a caller can stream features to disk."""
    n = len(dataset)  # type: ignore[arg-type]
    bs = batch_size or auto_batch_size(model.patch_px, model.runtime.cuda)
    workers = default_workers() if num_workers is None else num_workers
    # A worker overlaps reading batch k+1 with computing batch k; with a single batch there is nothing to
    # overlap, and starting a process (fork, reopening the slide) would only add latency.
    workers = max(0, min(workers, -(-n // bs) - 1))
    loader = DataLoader(_Indexed(dataset), batch_size=bs, shuffle=False, num_workers=workers,
                        collate_fn=Collate(model.preprocess), prefetch_factor=4 if workers else None,
                        pin_memory=model.runtime.pin_memory)
    with tqdm(total=n, desc=desc, unit="patch", leave=False, disable=not progress) as bar:
        for groups in loader:
            for idx, x in groups:
                put(idx.numpy(), model(x).cpu().numpy())
                bar.update(len(idx))


def embed(dataset: Dataset, model: FeatureModel, batch_size: int | None = None, num_workers: int | None = None,
          desc: str = "patches", progress: bool = True) -> np.ndarray:
    """Features [N, D] float32 of every item of `dataset`, in order, in memory."""
    out = np.empty((len(dataset), model.dim), dtype=np.float32)  # type: ignore[arg-type]

    def put(idx: np.ndarray, rows: np.ndarray) -> None:
        out[idx] = rows

    embed_into(dataset, model, put, batch_size, num_workers, desc, progress)
    return out


@dataclass
class SlideResult:
    slide: str
    out: str
    n_patches: int
    seconds: float
    stages: dict[str, float]  # slides: slide_stream.STAGES (seconds per stage); tiles: embed_write


@dataclass
class PreparedSlide:
    """An open slide with its patch grid: what `extract_slide` needs before the first patch is read."""

    path: Path
    reader: Any
    coords: np.ndarray
    stages: StageTimes


def prepare_slide(path: str | Path, model: FeatureModel, mpp: float | None = None, num_workers: int | None = None,
                  min_tissue: float = 0.5, fast: bool = True, tissue_mpp: float | None = EXTRACT_TISSUE_MPP
                  ) -> PreparedSlide:
    """Open the slide (its JPEG tiles decoded by `TileReader` unless `fast=False`) and find the tissue
    patches of `model`'s magnification. The caller closes `.reader` (`extract_prepared` does)."""
    path, stages = Path(path), StageTimes()
    with stages.time("open"):
        reader = open_slide(path, mpp=mpp)
        if fast:
            reader = fast_reader(reader, num_workers or slide_decode_threads(model.runtime))
    try:
        with stages.time("tissue_grid"):
            mask = detect_tissue(reader, TissueConfig(thumb_mpp=tissue_mpp))
            coords = aligned_grid(reader, mask, (model.mag,), {model.mag: model.patch_px}, min_tissue=min_tissue)
    except BaseException:
        reader.close()
        raise
    return PreparedSlide(path, reader, coords, stages)


def extract_prepared(prep: PreparedSlide, model: FeatureModel, out_path: str | Path, batch_size: int | None = None,
                     progress: bool = True, started: float | None = None) -> SlideResult:
    """Features of every patch of a prepared slide -> one HDF5 (written atomically); closes its reader.
    `started`: when the slide's turn began (`SlideResult.seconds` counts from there)."""
    started = time.perf_counter() if started is None else started
    coords = prep.coords
    with prep.reader as reader:
        bs = batch_size or auto_batch_size(model.patch_px, model.runtime.cuda)
        with tqdm(total=len(coords), desc=prep.path.name, unit="patch", leave=False, disable=not progress) as bar, \
                feature_writer(out_path, len(coords), model.dim, coords=coords, slide=prep.path.name,
                               mpp=float(reader.mpp), **model.attrs()) as put:
            stream_patches(reader, coords, model, put, bs, prep.stages, bar.update)
    return SlideResult(str(prep.path), str(out_path), len(coords), time.perf_counter() - started,
                       prep.stages.as_dict())


def extract_slide(path: str | Path, model: FeatureModel, out_path: str | Path, mpp: float | None = None,
                  batch_size: int | None = None, num_workers: int | None = None, min_tissue: float = 0.5,
                  progress: bool = True, fast: bool = True, tissue_mpp: float | None = EXTRACT_TISSUE_MPP
                  ) -> SlideResult:
    """Tissue mask -> aligned grid -> features of every patch -> one HDF5 (written atomically).
    `num_workers`: decode threads (None: `slide_decode_threads`); `fast=False`: the reader of record alone."""
    t0 = time.perf_counter()
    prep = prepare_slide(path, model, mpp, num_workers, min_tissue, fast, tissue_mpp)
    return extract_prepared(prep, model, out_path, batch_size, progress, t0)


def extract_slides(jobs: Sequence[tuple[str | Path, str | Path]], model: FeatureModel, mpp: float | None = None,
                   batch_size: int | None = None, num_workers: int | None = None, min_tissue: float = 0.5,
                   progress: bool = True, fast: bool = True, tissue_mpp: float | None = EXTRACT_TISSUE_MPP,
                   raise_errors: bool = False) -> Iterator[tuple[Path, SlideResult | Exception]]:
    """`extract_slide` over (slide, output) pairs, yielding (slide, result or the exception that stopped
    it; raised instead with `raise_errors`). The next slide is opened and its tissue found on a background
    thread while this one streams, so a cohort pays for them where a core would otherwise idle (at 5x they
    are a large share of a slide: `stages_per_slide` in results/bench_datapath.json). A result's `seconds`
    runs from the end of the previous slide: over a batch they add up to its wall time."""
    jobs = [(Path(src), Path(dst)) for src, dst in jobs]
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(1, thread_name_prefix="maga-prepare") as pool:
        def submit(k: int) -> None:
            if k < len(jobs):
                pending.append(pool.submit(prepare_slide, jobs[k][0], model, mpp, num_workers, min_tissue, fast,
                                           tissue_mpp))

        submit(0)
        try:
            for k, (src, dst) in enumerate(jobs):
                started = time.perf_counter()
                future = pending.popleft()
                submit(k + 1)
                try:
                    yield src, extract_prepared(future.result(), model, dst, batch_size, progress, started)
                except Exception as exc:  # noqa: BLE001 - the caller decides (extract_batch skips and reports)
                    if raise_errors:
                        raise
                    yield src, exc
        finally:  # stopped early: close what was opened ahead
            for future in pending:
                if future.exception() is None:
                    future.result().reader.close()


def find_files(folder: Path, suffixes: set[str]) -> list[Path]:
    """Files under `folder` (recursive, sorted) with these suffixes; hidden files and temporaries skipped."""
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."))


def extract_tiles(folder: str | Path, model: FeatureModel, out_path: str | Path, tile_mpp: float,
                  batch_size: int | None = None, num_workers: int | None = None, progress: bool = True) -> SlideResult:
    """Every image under `folder` -> one HDF5 with `features` and `paths` (relative to the folder)."""
    folder = Path(folder)
    paths = find_files(folder, TILE_SUFFIXES)
    if not paths:
        raise MagaError(f"no tile images ({', '.join(sorted(TILE_SUFFIXES))}) found", folder)
    t0 = time.perf_counter()
    rel = [p.relative_to(folder).as_posix() for p in paths]
    with feature_writer(out_path, len(paths), model.dim, paths=rel, slide="", mpp=float(tile_mpp),
                        root=str(folder.resolve()), **model.attrs()) as put:
        embed_into(TileImages(paths, tile_mpp, model.mag), model, put, batch_size, num_workers,
                   desc=folder.name, progress=progress)
    seconds = time.perf_counter() - t0
    return SlideResult(str(folder), str(out_path), len(paths), seconds, {"embed_write": seconds})
