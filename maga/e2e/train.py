"""Single-process end-to-end training: tile encoder and slide aggregator optimised jointly, one slide
(K sampled tiles) per step, plus the frozen-encoder baseline.

The pieces here (`build_encoder`, `build_aggregator`, `TileEncoder`, `slide_loss`, `set_modes`) are
the ones the distributed scheme (`e2e.distributed`) runs on its ranks, so the two schemes compute the
same function and their gradients can be compared number for number.

BatchNorm: by default (`bn="frozen"`) the encoder's BatchNorm layers use their stored (ImageNet)
statistics while their weights still train. This is a real modelling choice, not only a convenience:
with K tiles split across ranks, train-mode BatchNorm would normalise each rank's share by its own
statistics, and the distributed result would no longer equal the single-device one.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint
from tqdm.auto import tqdm

from maga_core import align as maga, encoders, mil
from maga_core.config import atomic_path, save_config, write_json
from maga_core.device import resolve_device, resolve_precision
from maga_core.errors import MagaError
from maga.e2e.data import BagDataset, imagenet_prepare
from maga.e2e.sampling import epoch_order

VAL_EPOCH = 10_000  # the sampling "epoch" of validation draws: fixed, and never one used in training


@dataclasses.dataclass
class E2EConfig:
    """One end-to-end run. `encoder` is a registry name or `maga:<checkpoint>` (a MAGA student)."""

    encoder: str = "efficientnet_lite0"
    aggregator: str = "abmil"
    n_classes: int = 2
    k: int = 16
    mag: float = 5.0
    px: int | None = 64
    epochs: int = 1
    max_steps: int = 0  # 0: every slide of every epoch
    lr_encoder: float = 1e-5
    lr_aggregator: float = 2e-4
    weight_decay: float = 1e-5
    seed: int = 0
    amp: bool = False  # reduced precision even on CPU: with precision "auto", bf16 on CPU, fp16 (+ GradScaler) on CUDA
    device: str = "auto"  # auto | cpu | cuda[:N] | mps (maga_core.device); saved resolved
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 autocast; saved resolved (amp = precision != fp32)
    checkpoint: bool = False  # activation checkpointing of the encoder, `chunk` tiles per segment
    chunk: int = 16
    freeze_encoder: bool = False  # the frozen-encoder baseline: only the aggregator trains
    bn: str = "frozen"  # "frozen": BatchNorm uses running statistics; "train": batch statistics
    replace: bool | None = None  # None: sample with replacement only when a slide has fewer than K
    dtype: str = "float32"  # "float64" for the equivalence check below float32 rounding
    aggregator_kw: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.bn not in ("frozen", "train"):
            raise MagaError(f"bn must be 'frozen' or 'train', got {self.bn!r}")
        if self.dtype not in ("float32", "float64"):
            raise MagaError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.k < 1 or self.chunk < 1:
            raise MagaError(f"K and chunk must be positive (k={self.k}, chunk={self.chunk})")


@dataclasses.dataclass
class E2EResult:
    """What a run gives: per-step training loss, per-epoch validation, and (when asked) the
    per-step gradients and final parameters used by the equivalence check."""

    config: E2EConfig
    history: list[dict[str, float]]
    validation: list[dict[str, float]]
    seconds: float
    record: dict[str, Any] | None = None

    @property
    def final_train_loss(self) -> float:
        """Mean training loss over the last epoch."""
        last = max(h["epoch"] for h in self.history)
        return float(np.mean([h["loss"] for h in self.history if h["epoch"] == last]))

    def summary(self) -> dict[str, Any]:
        out = {"final_train_loss": self.final_train_loss, "steps": len(self.history), "seconds": self.seconds}
        if self.validation:
            out.update({f"val_{k}": v for k, v in self.validation[-1].items() if k != "epoch"})
        return out


def device_for(local_rank: int | None = None) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank or 0)
    return torch.device("cpu")


def torch_dtype(cfg: E2EConfig) -> torch.dtype:
    return torch.float64 if cfg.dtype == "float64" else torch.float32


def amp_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    if precision in ("bf16", "fp16"):
        return torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def resolve_runtime(cfg: E2EConfig, device: str | None = None) -> E2EConfig:
    """`cfg` with its device (or the given one) and precision resolved, `amp` meaning precision != fp32."""
    dev = device or resolve_device(cfg.device)
    if cfg.amp and cfg.precision == "auto":
        precision = "fp16" if dev.startswith("cuda") else "bf16"
    else:
        precision = resolve_precision(cfg.precision, dev)
    return dataclasses.replace(cfg, device=dev, precision=precision, amp=precision != "fp32")


def build_encoder(cfg: E2EConfig) -> nn.Module:
    """The registry encoder (or MAGA student) with the same initial weights on every rank."""
    torch.manual_seed(cfg.seed)
    if cfg.encoder.startswith("maga:"):
        encoder = maga.load_student(cfg.encoder[len("maga:"):])
    else:
        encoder = encoders.build(cfg.encoder)
    if cfg.freeze_encoder:
        encoder.requires_grad_(False)
    return encoder


def build_aggregator(cfg: E2EConfig, in_dim: int) -> nn.Module:
    torch.manual_seed(cfg.seed + 1)
    return mil.build(cfg.aggregator, in_dim, cfg.n_classes, **cfg.aggregator_kw)


def prepare_for(encoder: nn.Module) -> Callable[[np.ndarray], torch.Tensor]:
    """The encoder's own input pipeline for a uint8 batch [n, H, W, 3]: a MAGA student's `prepare`,
    else the registry `transform` (its normalisation; no resizing, so tiles keep their magnification's
    size), else ImageNet normalisation."""
    for attr in ("prepare", "transform"):
        if hasattr(encoder, attr):
            return getattr(encoder, attr)
    return imagenet_prepare


class TileEncoder(nn.Module):
    """An encoder plus the memory options, in one forward so DistributedDataParallel sees exactly one
    forward per step: mixed precision (autocast) and activation checkpointing over chunks of tiles
    (only one chunk's activations live at a time; they are recomputed in backward). Features come
    out in float32 whatever the compute dtype, so what is gathered and compared is dtype-stable."""

    def __init__(self, encoder: nn.Module, amp: bool = False, checkpoint: bool = False, chunk: int = 16,
                 out_dtype: torch.dtype = torch.float32, precision: str = "auto"):
        super().__init__()
        self.encoder, self.amp, self.checkpoint, self.chunk = encoder, amp, checkpoint, chunk
        self.precision = precision
        self.out_dtype = out_dtype
        self.dim = int(encoder.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 0:
            return x.new_zeros((0, self.dim), dtype=self.out_dtype)
        with torch.autocast(x.device.type, dtype=amp_dtype(x.device, self.precision), enabled=self.amp):
            if torch.is_grad_enabled() and self.checkpoint:
                parts = [_checkpoint(self.encoder, c, use_reentrant=False) for c in x.split(self.chunk)]
            elif torch.is_grad_enabled():
                parts = [self.encoder(x)]
            else:  # inference: chunks bound memory at no cost
                parts = [self.encoder(c) for c in x.split(self.chunk)]
        return torch.cat(parts).to(self.out_dtype)


def set_modes(encoder: nn.Module, aggregator: nn.Module | None, cfg: E2EConfig, training: bool) -> None:
    if aggregator is not None:
        aggregator.train(training)
    encoder.train(training and not cfg.freeze_encoder)
    if cfg.bn == "frozen":
        for m in encoder.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def step_seed(cfg: E2EConfig, epoch: int, step: int) -> int:
    return (cfg.seed * 1_000_003 + epoch * 10_007 + step) % (2**31)


def slide_loss(aggregator: nn.Module, feats: torch.Tensor, label: int, cfg: E2EConfig,
               seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bag loss (plus the aggregator's auxiliary loss) of one slide. The aggregator's randomness
    (dropout, random padding) is drawn from a per-step seed in a forked RNG, so every scheme draws
    the same masks whatever else consumed random numbers in that process. Models with an instance
    loss (CLAM) get the label in training."""
    target = torch.tensor([label], device=feats.device)
    kw = {"label": target} if aggregator.training and _takes_label(aggregator) else {}
    devices = [feats.device] if feats.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        with torch.autocast(feats.device.type, dtype=amp_dtype(feats.device, cfg.precision), enabled=cfg.amp):
            out = aggregator(feats, **kw)
    logits = out.logits.to(feats.dtype)
    return out.combine(F.cross_entropy(logits, target)), logits.detach()


def _takes_label(model: nn.Module) -> bool:
    return "label" in inspect.signature(model.forward).parameters


def make_optimizer(params, lr: float, weight_decay: float) -> torch.optim.Optimizer | None:
    params = [p for p in params if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay) if params else None


def named_grads(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{n}": p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def named_params(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{n}": p.detach().clone() for n, p in module.named_parameters()}


def auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Macro one-vs-rest ROC AUC; NaN when the validation set holds a single class."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(labels)) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=range(probs.shape[1])))


class FrozenFeatureCache:
    """A frozen encoder gives each tile the same feature every time: embed each tile once."""

    def __init__(self, encoder: TileEncoder, prepare, device: torch.device):
        self.encoder, self.prepare, self.device = encoder, prepare, device
        self.store: dict[tuple[int, int], torch.Tensor] = {}

    def features(self, dataset: BagDataset, i: int, epoch: int) -> torch.Tensor:
        bag = id(dataset.bags[i])
        idx = [int(t) for t in dataset.indices(i, epoch)]
        missing = sorted({t for t in idx if (bag, t) not in self.store})
        if missing:
            x = self.prepare(dataset.bags[i].read(missing, dataset.mag, dataset.px))
            x = x.to(self.device, self.encoder.out_dtype)
            with torch.no_grad():
                for t, f in zip(missing, self.encoder(x)):
                    self.store[(bag, t)] = f
        return torch.stack([self.store[(bag, t)] for t in idx])


def _features(encoder: TileEncoder, prepare, dataset: BagDataset, i: int, epoch: int, device,
              cache: FrozenFeatureCache | None) -> torch.Tensor:
    if cache is not None:
        return cache.features(dataset, i, epoch)
    return encoder(prepare(dataset.tiles(i, epoch)).to(device, encoder.out_dtype))


@torch.no_grad()
def evaluate(encoder: TileEncoder, aggregator: nn.Module, dataset: BagDataset, cfg: E2EConfig,
             device: torch.device, prepare=None, cache: FrozenFeatureCache | None = None) -> dict[str, float]:
    """Validation loss and AUC, K tiles per slide drawn once (VAL_EPOCH) so every evaluation of a
    run sees the same tiles."""
    prepare = prepare or prepare_for(encoder.encoder)
    set_modes(encoder, aggregator, cfg, training=False)
    probs, losses = [], []
    for i in range(len(dataset)):
        feats = _features(encoder, prepare, dataset, i, VAL_EPOCH, device, cache)
        loss, logits = slide_loss(aggregator, feats, dataset.label(i), cfg, seed=i)
        losses.append(float(loss.detach()))
        probs.append(torch.softmax(logits, dim=1)[0].cpu().numpy())
    probs_arr = np.stack(probs)
    labels = dataset.labels()
    return {"loss": float(np.mean(losses)), "auc": auc(labels, probs_arr),
            "accuracy": float((probs_arr.argmax(1) == labels).mean())}


def train(cfg: E2EConfig, train_set: BagDataset, val_set: BagDataset | None = None,
          out_dir: str | Path | None = None, record: bool = False, progress: bool = True) -> E2EResult:
    """Train encoder + aggregator on one process. `record=True` keeps every step's gradients and the
    final parameters (for the equivalence check against the distributed scheme)."""
    _check_dataset(cfg, train_set)
    cfg = resolve_runtime(cfg)
    device = torch.device(cfg.device)
    base = build_encoder(cfg)
    prepare = prepare_for(base)
    encoder = TileEncoder(base, cfg.amp, cfg.checkpoint, cfg.chunk, torch_dtype(cfg),
                          cfg.precision).to(device, torch_dtype(cfg))
    aggregator = build_aggregator(cfg, encoder.dim).to(device, torch_dtype(cfg))
    opt_enc = None if cfg.freeze_encoder else make_optimizer(encoder.parameters(), cfg.lr_encoder, cfg.weight_decay)
    opt_agg = make_optimizer(aggregator.parameters(), cfg.lr_aggregator, cfg.weight_decay)
    optimizers = [o for o in (opt_enc, opt_agg) if o is not None]
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16" and device.type == "cuda")
    cache = FrozenFeatureCache(encoder, prepare, device) if cfg.freeze_encoder else None
    history, validation = [], []
    rec: dict[str, Any] = {"loss": [], "grads": []}
    n_steps = _n_steps(cfg, len(train_set))
    start, step = time.perf_counter(), 0
    bar = tqdm(total=n_steps, desc=f"e2e {cfg.aggregator} K={cfg.k}", disable=not progress, leave=False)
    for epoch in range(cfg.epochs):
        for i in epoch_order(len(train_set), cfg.seed, epoch):
            if step >= n_steps:
                break
            set_modes(encoder, aggregator, cfg, training=True)
            feats = _features(encoder, prepare, train_set, int(i), epoch, device, cache)
            loss, _ = slide_loss(aggregator, feats, train_set.label(int(i)), cfg, step_seed(cfg, epoch, step))
            for o in optimizers:
                o.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            for o in optimizers:
                scaler.unscale_(o)
            if record:
                rec["loss"].append(float(loss.detach()))
                rec["grads"].append({**named_grads(encoder.encoder, "encoder"), **named_grads(aggregator, "aggregator")})
            for o in optimizers:
                scaler.step(o)
            scaler.update()
            history.append({"step": step, "epoch": epoch, "slide": int(i), "loss": float(loss.detach())})
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        if val_set is not None:
            validation.append({"epoch": epoch, **evaluate(encoder, aggregator, val_set, cfg, device, prepare,
                                                          cache)})
        if step >= n_steps:
            break
    bar.close()
    if record:
        rec["params"] = {**named_params(encoder.encoder, "encoder"), **named_params(aggregator, "aggregator")}
    result = E2EResult(cfg, history, validation, time.perf_counter() - start, rec if record else None)
    if out_dir is not None:
        save_result(result, out_dir, {"encoder": encoder.encoder.state_dict(),
                                      "aggregator": aggregator.state_dict()})
    return result


def _n_steps(cfg: E2EConfig, n_slides: int) -> int:
    total = cfg.epochs * n_slides
    return min(total, cfg.max_steps) if cfg.max_steps else total


def _check_dataset(cfg: E2EConfig, dataset: BagDataset) -> None:
    if dataset.k != cfg.k:
        raise MagaError(f"dataset samples K={dataset.k} tiles but the config says K={cfg.k}")
    labels = dataset.labels()
    if labels.min() < 0 or labels.max() >= cfg.n_classes:
        raise MagaError(f"labels must lie in [0, {cfg.n_classes}), got {sorted(set(labels.tolist()))}")


def save_result(result: E2EResult, out_dir: str | Path, state: dict[str, Any] | None = None) -> Path:
    """config.json, metrics.json (history, validation, summary) and, when given, model.pt."""
    out = Path(out_dir)
    save_config(result.config, out)
    write_json({"summary": result.summary(), "history": result.history, "validation": result.validation},
               out / "metrics.json")
    if state is not None:
        with atomic_path(out / "model.pt") as tmp:
            torch.save(state, tmp)
    return out
