"""Training one aggregator on bags of instance features.

Per-model optimiser and stopping rules follow each model's public code (see /shared facts): GLTrans
and TransMIL use Lookahead(RAdam) with no weight decay on biases and 1-D parameters; CLAM uses Adam and
stops on validation loss (not before epoch 50); GLTrans selects its checkpoint on validation macro F1.
Everything is seeded and runs deterministically on CPU, so a fold can be re-run bit for bit.

On a GPU one bag per forward pass leaves it mostly idle; `bag_batch` stacks bags of one size class into
one pass (see `bag_batches`). The default, 1, is upstream's one bag per step.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score, roc_auc_score
from torch import nn
from tqdm.auto import tqdm

from maga_core import mil
from maga_core.config import atomic_path, save_config, torch_save
from maga_core.data.features import read_features
from maga_core.device import Runtime
from maga_core.errors import MagaError

# Bags batched together differ in instance count by less than this factor; each is cut to the smallest.
SIZE_CLASS_RATIO = 1.25

# Defaults from each model's paper/code. ABMIL: Ilse et al. 2018, histopathology setting (Adam 1e-4,
# weight decay 5e-4). TransMIL's code monitors validation loss; no minimum epoch count there.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "gltrans": dict(optimizer="lookahead_radam", lr=1e-4, weight_decay=1e-5, no_decay_1d=True,
                    monitor="val_f1", patience=40, min_epochs=0, max_epochs=200, grad_accum=2, seed=2023),
    "transmil": dict(optimizer="lookahead_radam", lr=2e-4, weight_decay=1e-5, no_decay_1d=True,
                     monitor="val_loss", patience=20, min_epochs=0, max_epochs=200, grad_accum=1),
    "clam_sb": dict(optimizer="adam", lr=2e-4, weight_decay=1e-5, no_decay_1d=False,
                    monitor="val_loss", patience=20, min_epochs=50, max_epochs=200, grad_accum=1),
    "clam_mb": dict(optimizer="adam", lr=2e-4, weight_decay=1e-5, no_decay_1d=False,
                    monitor="val_loss", patience=20, min_epochs=50, max_epochs=200, grad_accum=1),
    "abmil": dict(optimizer="adam", lr=1e-4, weight_decay=5e-4, no_decay_1d=False,
                  monitor="val_loss", patience=20, min_epochs=0, max_epochs=200, grad_accum=1),
}


@dataclass
class TrainConfig:
    """How one aggregator is trained. Build with `TrainConfig.for_model(name, **overrides)`."""

    model: str = "gltrans"
    optimizer: str = "lookahead_radam"  # adam | radam | lookahead_radam
    lr: float = 1e-4
    weight_decay: float = 1e-5
    no_decay_1d: bool = True  # no weight decay on biases, norms and other 1-D parameters
    lookahead_alpha: float = 0.5
    lookahead_k: int = 6
    monitor: str = "val_f1"  # val_f1 (higher is better) | val_loss (lower is better)
    patience: int = 40
    min_epochs: int = 0  # early stopping may not trigger before this epoch
    max_epochs: int = 200
    grad_accum: int = 1  # batches (of bag_batch bags) per optimiser step
    bag_batch: int = 1  # bags per forward pass, of one size class (see bag_batches); 1: one bag per pass
    max_instances: int = 20480  # bags above this are subsampled in training (upstream GLTrans)
    shuffle_instances: bool = True
    seed: int = 2023
    threads: int = 1  # torch intra-op threads; bags are small, and more threads thrash a busy CPU (20x here)
    model_kw: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"  # resolved device (maga_core.device); bags are copied there one step ahead
    precision: str = "fp32"  # autocast in training (fp32 | bf16 | fp16); evaluation runs in fp32

    @classmethod
    def for_model(cls, model: str, **overrides: Any) -> "TrainConfig":
        if model not in MODEL_DEFAULTS:
            raise MagaError(f"no training defaults for MIL model {model!r}; known: {sorted(MODEL_DEFAULTS)}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise MagaError(f"unknown training settings {sorted(unknown)}")
        values = {**MODEL_DEFAULTS[model], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(model=model, **values)


@dataclass
class Bag:
    """One slide as a bag: instance features, their level-0 coordinates and the slide label."""

    slide: str
    features: torch.Tensor  # [N, D] float32
    label: int
    coords: torch.Tensor | None = None  # [N, 2] int64


@dataclass
class TrainResult:
    history: pd.DataFrame  # one row per epoch: epoch, train_loss, val_loss, val_f1, val_auc
    best_epoch: int
    best_value: float
    stopped_epoch: int


def load_bags(slides: Sequence[str], labels: Sequence[int], features_dir: str | Path) -> list[Bag]:
    """Read `<features_dir>/<slide>.h5` for every slide (bags are small: kept in memory)."""
    features_dir = Path(features_dir)
    bags = []
    for slide, label in zip(slides, labels):
        ff = read_features(features_dir / f"{slide}.h5")
        if len(ff) == 0:
            raise MagaError("feature file holds no instances (no tissue found?)", features_dir / f"{slide}.h5")
        coords = torch.from_numpy(ff.coords) if ff.coords is not None else None
        bags.append(Bag(slide=str(slide), features=torch.from_numpy(ff.features), label=int(label), coords=coords))
    return bags


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam / RAdam / Lookahead(RAdam) (timm's Lookahead: slow weights pulled every k steps by alpha)."""
    from timm.optim import Lookahead, param_groups_weight_decay

    if cfg.no_decay_1d:
        groups = param_groups_weight_decay(model, cfg.weight_decay)
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": cfg.weight_decay}]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "radam":
        return torch.optim.RAdam(groups, lr=cfg.lr)
    if cfg.optimizer == "lookahead_radam":
        return Lookahead(torch.optim.RAdam(groups, lr=cfg.lr), alpha=cfg.lookahead_alpha, k=cfg.lookahead_k)
    raise MagaError(f"unknown optimizer {cfg.optimizer!r} (adam, radam, lookahead_radam)")


def _takes_label(model: nn.Module) -> bool:
    """CLAM needs the bag label in training for its instance loss; other models take none."""
    return "label" in inspect.signature(model.forward).parameters


def _model_device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


def predict_bags(model: nn.Module, bags: Sequence[Bag], scores: bool = False) -> dict[str, Any]:
    """Eval-mode class probabilities `[B, C]`, per-bag cross-entropy and optionally instance scores
    (fp32, on the model's device)."""
    model.eval()
    dev = _model_device(model)
    probs, losses, inst = [], [], []
    with torch.no_grad():
        for bag in bags:
            coords = bag.coords.to(dev) if bag.coords is not None else None
            out = model(bag.features.to(dev), coords=coords)
            logits = out.logits.float().cpu()
            probs.append(torch.softmax(logits, dim=1)[0].numpy())
            losses.append(float(F.cross_entropy(logits, torch.tensor([bag.label]))))
            if scores:
                s = out.scores
                inst.append(s.detach().float().cpu().numpy())
    result: dict[str, Any] = {"probs": np.stack(probs) if probs else np.zeros((0, 0)), "loss": np.array(losses)}
    if scores:
        result["scores"] = inst
    return result


def evaluate(model: nn.Module, bags: Sequence[Bag]) -> dict[str, float]:
    """Validation loss, macro F1 and AUC (AUC is NaN when the set holds one class only)."""
    pred = predict_bags(model, bags)
    y = np.array([b.label for b in bags])
    probs = pred["probs"]
    f1 = float(f1_score(y, probs.argmax(1), average="macro", zero_division=0))
    try:
        auc = float(roc_auc_score(y, probs[:, 1]) if probs.shape[1] == 2
                    else roc_auc_score(y, probs, multi_class="ovr", labels=list(range(probs.shape[1]))))
    except ValueError:
        auc = float("nan")
    return {"val_loss": float(pred["loss"].mean()), "val_f1": f1, "val_auc": auc}


def _better(cfg: TrainConfig, metrics: dict[str, float], best: dict[str, float] | None) -> bool:
    """Validation F1 (ties broken by lower loss) or validation loss, as the model's code monitors."""
    if best is None:
        return True
    if cfg.monitor == "val_f1":
        return (metrics["val_f1"] > best["val_f1"] + 1e-12
                or (abs(metrics["val_f1"] - best["val_f1"]) <= 1e-12 and metrics["val_loss"] < best["val_loss"]))
    if cfg.monitor == "val_loss":
        return metrics["val_loss"] < best["val_loss"]
    raise MagaError(f"unknown monitor {cfg.monitor!r} (val_f1, val_loss)")


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with `n` intra-op threads (0: leave torch's setting), restoring it afterwards."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_model(model: nn.Module, train_bags: Sequence[Bag], val_bags: Sequence[Bag], cfg: TrainConfig,
                progress: bool = True, desc: str = "train") -> TrainResult:
    """Train in place; on return the model holds the weights of the selected (best) epoch.

    `cfg.bag_batch` bags per forward pass (`bag_batches`), the loss their mean; gradients accumulated
    over `cfg.grad_accum` such batches; instances shuffled (and subsampled beyond `max_instances`, or
    to the smallest bag of the batch) each step, from a generator seeded by `cfg.seed`.
    """
    if not train_bags:
        raise MagaError("no training bags")
    check_bag_batch(model, cfg)
    with torch_threads(cfg.threads):
        return _train(model, train_bags, val_bags, cfg, progress, desc)


def check_bag_batch(model: nn.Module, cfg: TrainConfig) -> None:
    """Refuse a batch size the model cannot take before any training starts."""
    if cfg.bag_batch < 1:
        raise MagaError(f"bag_batch must be at least 1, got {cfg.bag_batch}")
    if cfg.bag_batch > 1 and not getattr(model, "batches_bags", False):
        name = f"{cfg.model} with {cfg.model_kw}" if cfg.model_kw else cfg.model
        raise MagaError(f"{name} takes one bag per forward pass (coordinate-placed grids differ per bag); "
                        f"use bag_batch=1 and grad_accum instead")


def bag_batches(sizes: Sequence[int], bag_batch: int, gen: torch.Generator) -> list[list[int]]:
    """One epoch's batches of bag indices, in random order.

    `bag_batch=1`: one bag per batch, in the order of one `randperm` (the draw of the one-bag trainer,
    so its results are unchanged). Otherwise bags are shuffled, grouped by size class - the floor of
    the log of `sizes` (instance counts after the `max_instances` cap) to base `SIZE_CLASS_RATIO`, so
    bags of one class differ by less than that factor and bags of equal size always share one - each
    class cut into batches of `bag_batch` bags in shuffled order (its last batch may be smaller), and
    the batches shuffled.
    """
    order = torch.randperm(len(sizes), generator=gen).tolist()
    if bag_batch == 1:
        return [[i] for i in order]
    classes: dict[int, list[int]] = {}
    for i in order:
        classes.setdefault(math.floor(math.log(sizes[i]) / math.log(SIZE_CLASS_RATIO)), []).append(i)
    batches = [members[j:j + bag_batch] for members in classes.values() for j in range(0, len(members), bag_batch)]
    return [batches[k] for k in torch.randperm(len(batches), generator=gen).tolist()]


def _instance_index(n: int, m: int, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """The m of a bag's n instances one step uses: a seeded random subset in random order, or the first m
    when instances are not shuffled (as the `max_instances` cap does)."""
    return torch.randperm(n, generator=gen)[:m] if cfg.shuffle_instances else torch.arange(m)


def _cut(tensors: Sequence[tuple[torch.Tensor, torch.Tensor | None]], m: int, cfg: TrainConfig,
         gen: torch.Generator, device: str) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Every bag of a batch (features, coords) cut to the same m instances, so that they stack."""
    xs, cs = [], []
    for x, c in tensors:
        pick = _instance_index(x.shape[0], m, cfg, gen).to(device)
        xs.append(x[pick])
        cs.append(None if c is None else c[pick])
    return xs, cs


def batch_loss(model: nn.Module, xs: Sequence[torch.Tensor], cs: Sequence[torch.Tensor | None],
               labels: Sequence[int], rt) -> torch.Tensor:
    """Training loss of equal-sized bags `[N, D]` in one forward pass: the mean over the bags of the bag
    cross-entropy (mixed with the model's auxiliary loss when it gives one)."""
    x = torch.stack(list(xs))
    c = torch.stack(list(cs)) if all(c is not None for c in cs) else None
    y = torch.tensor(list(labels), device=x.device)
    with rt.autocast():
        out = model(x, coords=c, label=y) if _takes_label(model) else model(x, coords=c)
        return out.combine(F.cross_entropy(out.logits.float(), y))


def _train(model: nn.Module, train_bags: Sequence[Bag], val_bags: Sequence[Bag], cfg: TrainConfig,
           progress: bool, desc: str) -> TrainResult:
    rt = Runtime(cfg.device, cfg.precision)
    model.to(rt.device)
    seed_everything(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = build_optimizer(model, cfg)
    sizes = [min(len(b.features), cfg.max_instances) for b in train_bags]
    rows, best, best_state, best_epoch, since_best = [], None, None, -1, 0
    bar = tqdm(range(cfg.max_epochs), desc=desc, disable=not progress, leave=False)
    epoch = -1
    for epoch in bar:
        model.train()
        batches = bag_batches(sizes, cfg.bag_batch, gen)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        ahead = [_to_device(train_bags[i], rt) for i in batches[0]]
        for step, batch in enumerate(batches):
            tensors = ahead
            if step + 1 < len(batches):  # the next batch's copy overlaps this step's compute on a GPU
                ahead = [_to_device(train_bags[i], rt) for i in batches[step + 1]]
            xs, cs = _cut(tensors, min(sizes[i] for i in batch), cfg, gen, rt.device)
            loss = batch_loss(model, xs, cs, [train_bags[i].label for i in batch], rt)
            (loss / cfg.grad_accum).backward()
            total += float(loss.detach()) * len(batch)
            if (step + 1) % cfg.grad_accum == 0 or step == len(batches) - 1:
                opt.step()
                opt.zero_grad(set_to_none=True)
        metrics = evaluate(model, val_bags) if val_bags else {"val_loss": math.nan, "val_f1": math.nan,
                                                             "val_auc": math.nan}
        row = {"epoch": epoch, "train_loss": total / len(train_bags), **metrics}
        rows.append(row)
        if not val_bags or _better(cfg, metrics, best):
            best, best_epoch, since_best = metrics, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_f1=f"{metrics['val_f1']:.3f}",
                        val_loss=f"{metrics['val_loss']:.3f}", best=best_epoch)
        if val_bags and epoch + 1 >= cfg.min_epochs and since_best >= cfg.patience:
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    best_value = best[cfg.monitor] if best else math.nan
    return TrainResult(history=pd.DataFrame(rows), best_epoch=best_epoch, best_value=float(best_value),
                       stopped_epoch=epoch)


def _to_device(bag: Bag, rt) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A bag's features and coords on the training device (pinned first on CUDA: asynchronous copy)."""
    if not rt.cuda:
        return rt.to(bag.features), rt.to(bag.coords)
    return (rt.to(bag.features.pin_memory()),
            rt.to(bag.coords.pin_memory()) if bag.coords is not None else None)


def build(name: str, in_dim: int, n_classes: int, **kw: Any) -> nn.Module:
    """`maga_core.mil.build`, imported late: the package registers every model when imported."""
    return mil.build(name, in_dim, n_classes, **kw)


def new_model(cfg: TrainConfig, in_dim: int, n_classes: int) -> nn.Module:
    """The aggregator of `cfg.model`, initialised from `cfg.seed` (same seed, same weights)."""
    seed_everything(cfg.seed)
    return build(cfg.model, in_dim, n_classes, **cfg.model_kw)


def save_checkpoint(model: nn.Module, cfg: TrainConfig, in_dim: int, n_classes: int, path: str | Path,
                    **extra: Any) -> Path:
    """Weights plus what is needed to rebuild the model (name, dims, config), written atomically."""
    payload = {"model": cfg.model, "in_dim": in_dim, "n_classes": n_classes, "config": dataclasses.asdict(cfg),
               "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, **extra}
    return torch_save(payload, path)


def load_checkpoint(path: str | Path) -> tuple[nn.Module, TrainConfig]:
    """Rebuild an eval-mode model from `save_checkpoint`'s file."""
    path = Path(path)
    if not path.is_file():
        raise MagaError("checkpoint not found", path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MagaError(f"not a readable checkpoint ({type(exc).__name__}: {exc})", path) from exc
    cfg = TrainConfig(**payload["config"])
    model = build(payload["model"], payload["in_dim"], payload["n_classes"], **cfg.model_kw)
    model.load_state_dict(payload["state_dict"])
    return model.eval(), cfg


def train_run(cfg: TrainConfig, train_bags: Sequence[Bag], val_bags: Sequence[Bag], out_dir: str | Path,
              n_classes: int, progress: bool = True, desc: str = "train") -> tuple[nn.Module, TrainResult]:
    """Build, train and save one model: config.json, history.csv and checkpoint.pt in `out_dir`."""
    out_dir = Path(out_dir)
    in_dim = int(train_bags[0].features.shape[1])
    model = new_model(cfg, in_dim, n_classes)
    result = train_model(model, train_bags, val_bags, cfg, progress=progress, desc=desc)
    save_config(cfg, out_dir)
    with atomic_path(out_dir / "history.csv") as tmp:
        result.history.to_csv(tmp, index=False)
    save_checkpoint(model, cfg, in_dim, n_classes, out_dir / "checkpoint.pt", best_epoch=result.best_epoch)
    return model, result
