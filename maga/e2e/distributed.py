"""The 1 + N process scheme of end-to-end slide training, on torch.distributed.

Rank 0 holds only the aggregator. Ranks 1..N hold the tile encoder under DistributedDataParallel in
their own process group. One step is one slide with K tiles split across the encoder ranks:

1. each encoder rank embeds its share (`sampling.part_slice`) and the features go to rank 0 by
   `dist.gather` (shares are padded to the largest one, because gather moves equal shapes);
2. rank 0 concatenates them in rank order, runs the aggregator forward, the loss and backward;
3. rank 0 splits d loss / d features into the ranks' shares and `dist.scatter`s them back;
4. each encoder rank back-propagates the pseudo-loss N * sum(features * grad): its gradient with
   respect to the encoder is exactly this share's contribution to the true gradient, and the factor N
   undoes DDP's averaging, so after DDP's all-reduce every encoder rank holds the full-slide gradient.

Launch with torchrun (`torchrun --nproc-per-node 3 -m maga.cli e2e ...`, `run_from_env`) or,
from Python (tests, the chapter), with `launch`, which spawns the processes itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from maga_core.config import atomic_path
from maga_core.errors import MagaError
from maga.e2e.data import BagDataset
from maga.e2e.sampling import epoch_order, split_counts
from maga.e2e.train import (E2EConfig, E2EResult, TileEncoder, VAL_EPOCH, _check_dataset, _n_steps, auc,
                            build_aggregator, build_encoder, device_for, make_optimizer, named_grads,
                            named_params, prepare_for, resolve_runtime, save_result, set_modes, slide_loss,
                            step_seed, torch_dtype, train)

AGGREGATOR_RANK = 0


@dataclasses.dataclass
class _Ctx:
    """Where this process stands in the scheme."""

    rank: int
    world: int
    enc_group: Any
    device: torch.device
    dtype: torch.dtype = torch.float32

    @property
    def n_enc(self) -> int:
        return self.world - 1

    @property
    def part(self) -> int:
        return self.rank - 1


def _pad(x: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([x, x.new_zeros((rows - x.shape[0], *x.shape[1:]))]) if x.shape[0] < rows else x


def _gather_features(ctx: _Ctx, mine: torch.Tensor | None, counts: list[int], dim: int) -> torch.Tensor | None:
    """Encoder ranks send their (padded) share; rank 0 returns the [K, D] concatenation in rank order."""
    rows = max(counts)
    if ctx.rank == AGGREGATOR_RANK:
        bufs = [torch.empty(rows, dim, device=ctx.device, dtype=ctx.dtype) for _ in range(ctx.world)]
        dist.gather(torch.zeros(rows, dim, device=ctx.device, dtype=ctx.dtype), bufs, dst=AGGREGATOR_RANK)
        return torch.cat([bufs[r][: counts[r - 1]] for r in range(1, ctx.world)])
    dist.gather(_pad(mine.detach(), rows).contiguous(), None, dst=AGGREGATOR_RANK)
    return None


def _scatter_grads(ctx: _Ctx, grad: torch.Tensor | None, counts: list[int], dim: int) -> torch.Tensor | None:
    """Rank 0 splits d loss / d features into the ranks' shares; each encoder rank gets its own."""
    rows = max(counts)
    out = torch.empty(rows, dim, device=ctx.device, dtype=ctx.dtype)
    if ctx.rank == AGGREGATOR_RANK:
        pieces = [torch.zeros(rows, dim, device=ctx.device, dtype=ctx.dtype)]
        pieces += [_pad(p, rows).contiguous() for p in grad.split(counts)]
        dist.scatter(out, pieces, src=AGGREGATOR_RANK)
        return None
    dist.scatter(out, None, src=AGGREGATOR_RANK)
    return out[: counts[ctx.part]]


def run_rank(cfg: E2EConfig, train_set: BagDataset, val_set: BagDataset | None = None,
             out_dir: str | Path | None = None, record: bool = False, progress: bool = True) -> E2EResult | None:
    """Run the scheme in an initialised default process group (world size >= 2). Rank 0 returns the
    E2EResult (and saves it when out_dir is given); encoder rank 1 saves the encoder. With record=True
    rank 0 keeps losses and aggregator gradients, rank 1 encoder gradients; both write them to out_dir."""
    _check_dataset(cfg, train_set)
    rank, world = dist.get_rank(), dist.get_world_size()
    if world < 2:
        raise MagaError("the distributed scheme needs 1 aggregator rank and at least 1 encoder rank")
    if cfg.k < world - 1:
        raise MagaError(f"K={cfg.k} tiles cannot be split across {world - 1} encoder ranks")
    # Depthwise convolution weights [C, 1, k, k] get gradients with an equivalent but differently
    # strided layout; DDP copies them into its buckets and warns about speed, not correctness.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    enc_group = dist.new_group(list(range(1, world)))  # every rank must take part in creating it
    local = int(os.environ.get("LOCAL_RANK", rank))
    device = device_for(local) if dist.get_backend() == "nccl" else torch.device("cpu")
    cfg = resolve_runtime(cfg, str(device))
    ctx = _Ctx(rank, world, enc_group, device, torch_dtype(cfg))
    counts = split_counts(cfg.k, ctx.n_enc)
    n_steps = _n_steps(cfg, len(train_set))

    dim_t = torch.zeros(1, dtype=torch.int64, device=device)
    if rank == AGGREGATOR_RANK:
        encoder = model = prepare = opt = None
    else:
        base = build_encoder(cfg)
        prepare = prepare_for(base)
        encoder = TileEncoder(base, cfg.amp, cfg.checkpoint, cfg.chunk, ctx.dtype, cfg.precision).to(device, ctx.dtype)
        dim_t.fill_(encoder.dim)
        model = encoder if cfg.freeze_encoder else DDP(encoder, process_group=enc_group,
                                                       device_ids=[device.index] if device.type == "cuda" else None)
        opt = None if cfg.freeze_encoder else make_optimizer(model.parameters(), cfg.lr_encoder, cfg.weight_decay)
    dist.broadcast(dim_t, src=1)  # rank 0 learns the feature width from the encoders
    dim = int(dim_t.item())
    if rank == AGGREGATOR_RANK:
        aggregator = build_aggregator(cfg, dim).to(device, ctx.dtype)
        opt = make_optimizer(aggregator.parameters(), cfg.lr_aggregator, cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16" and device.type == "cuda")

    history, validation, rec = [], [], {"loss": [], "grads": []}
    start, step = time.perf_counter(), 0
    for epoch in range(cfg.epochs):
        for i in epoch_order(len(train_set), cfg.seed, epoch):
            if step >= n_steps:
                break
            i = int(i)
            if rank == AGGREGATOR_RANK:
                aggregator.train(True)
                feats = _gather_features(ctx, None, counts, dim).requires_grad_(not cfg.freeze_encoder)
                loss, _ = slide_loss(aggregator, feats, train_set.label(i), cfg, step_seed(cfg, epoch, step))
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                if not cfg.freeze_encoder:  # feature gradients travel unscaled, in float32
                    _scatter_grads(ctx, feats.grad / scaler.get_scale() if scaler.is_enabled() else feats.grad,
                                   counts, dim)
                if record:
                    rec["loss"].append(float(loss.detach()))
                    rec["grads"].append(named_grads(aggregator, "aggregator"))
                scaler.step(opt)
                scaler.update()
                history.append({"step": step, "epoch": epoch, "slide": i, "loss": float(loss.detach())})
                if progress:
                    print(f"[e2e rank 0] epoch {epoch} step {step + 1}/{n_steps} loss {float(loss.detach()):.4f}", flush=True)
            else:
                set_modes(encoder, None, cfg, training=True)
                x = prepare(train_set.tiles(i, epoch, ctx.part, ctx.n_enc)).to(device, ctx.dtype)
                if cfg.freeze_encoder:
                    with torch.no_grad():
                        feats = model(x)
                    _gather_features(ctx, feats, counts, dim)
                else:
                    feats = model(x)
                    _gather_features(ctx, feats, counts, dim)
                    grad = _scatter_grads(ctx, None, counts, dim)
                    opt.zero_grad(set_to_none=True)
                    pseudo = (feats * grad).sum() * ctx.n_enc  # x N: DDP averages over the N encoder ranks
                    scaler.scale(pseudo).backward()
                    scaler.unscale_(opt)
                    if record and rank == 1:
                        rec["grads"].append(named_grads(encoder.encoder, "encoder"))
                    scaler.step(opt)
                    scaler.update()
            step += 1
        if val_set is not None:
            metrics = _evaluate(ctx, encoder, model, prepare, aggregator if rank == 0 else None, val_set, cfg, counts, dim)
            if rank == AGGREGATOR_RANK:
                validation.append({"epoch": epoch, **metrics})
        if step >= n_steps:
            break
    seconds = time.perf_counter() - start

    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        if record and rank in (0, 1):
            rec["params"] = named_params(aggregator if rank == 0 else encoder.encoder,
                                         "aggregator" if rank == 0 else "encoder")
            _save(rec, Path(out_dir) / f"record_rank{rank}.pt")
        if rank == 1:
            _save({"encoder": encoder.encoder.state_dict()}, Path(out_dir) / "encoder.pt")
    result = None
    if rank == AGGREGATOR_RANK:
        result = E2EResult(cfg, history, validation, seconds)
        if out_dir is not None:
            save_result(result, out_dir, {"aggregator": aggregator.state_dict()})
    dist.barrier()
    return result


@torch.no_grad()
def _evaluate(ctx: _Ctx, encoder, model, prepare, aggregator, dataset: BagDataset, cfg: E2EConfig,
              counts: list[int], dim: int) -> dict[str, float]:
    """Validation through the same gather path (no scatter): rank 0 returns loss / AUC / accuracy."""
    probs, losses = [], []
    if ctx.rank != AGGREGATOR_RANK:
        set_modes(encoder, None, cfg, training=False)
    else:
        aggregator.eval()
    for i in range(len(dataset)):
        if ctx.rank == AGGREGATOR_RANK:
            feats = _gather_features(ctx, None, counts, dim)
            loss, logits = slide_loss(aggregator, feats, dataset.label(i), cfg, seed=i)
            losses.append(float(loss.detach()))
            probs.append(torch.softmax(logits, dim=1)[0].cpu().numpy())
        else:
            x = prepare(dataset.tiles(i, VAL_EPOCH, ctx.part, ctx.n_enc)).to(ctx.device, ctx.dtype)
            _gather_features(ctx, encoder(x), counts, dim)  # the bare module: no DDP hooks in inference
    if ctx.rank != AGGREGATOR_RANK:
        return {}
    probs_arr, labels = np.stack(probs), dataset.labels()
    return {"loss": float(np.mean(losses)), "auc": auc(labels, probs_arr),
            "accuracy": float((probs_arr.argmax(1) == labels).mean())}


def _save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, rendezvous: str, backend: str, threads: int,
            jobs: list[tuple[E2EConfig, str]], train_set: BagDataset, val_set: BagDataset | None,
            record: bool) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(threads)
    dist.init_process_group(backend, init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        for cfg, out_dir in jobs:
            run_rank(cfg, train_set, val_set, out_dir, record=record, progress=False)
    finally:
        dist.destroy_process_group()


def _launch_all(cfgs: list[E2EConfig], train_set: BagDataset, val_set: BagDataset | None, n_encoder_ranks: int,
                work_dirs: list[Path], backend: str, record: bool, threads: int) -> list[E2EResult]:
    """One set of 1 + n_encoder_ranks processes runs every config in turn (starting processes, not
    training, is most of a small run's cost); one E2EResult per config."""
    world = 1 + n_encoder_ranks
    for work in work_dirs:
        work.mkdir(parents=True, exist_ok=True)
    # Rendezvous through a fresh file, not a TCP port: a port found free can be taken by another
    # launch (a second copy of the tests) before the ranks bind it.
    with tempfile.TemporaryDirectory(prefix="maga-e2e-rendezvous-") as tmp:
        jobs = [(cfg, str(work)) for cfg, work in zip(cfgs, work_dirs)]
        mp.spawn(_worker, args=(world, str(Path(tmp) / "rendezvous"), backend, threads, jobs, train_set, val_set,
                                record), nprocs=world, join=True)
    results = []
    for cfg, work in zip(cfgs, work_dirs):
        metrics = json.loads((work / "metrics.json").read_text())
        rec = None
        if record:
            r0, r1 = (torch.load(work / f"record_rank{r}.pt") for r in (0, 1))
            rec = {"loss": r0["loss"], "grads": [{**a, **e} for a, e in zip(r0["grads"], r1["grads"])],
                   "params": {**r0["params"], **r1["params"]}}
        results.append(E2EResult(cfg, metrics["history"], metrics["validation"], metrics["summary"]["seconds"], rec))
    return results


def launch(cfg: E2EConfig, train_set: BagDataset, val_set: BagDataset | None = None, n_encoder_ranks: int = 2,
           out_dir: str | Path | None = None, backend: str = "gloo", record: bool = False,
           threads: int = 1) -> E2EResult:
    """Spawn 1 + n_encoder_ranks processes on this machine, run the scheme, return rank 0's result
    (with `record` holding losses, gradients of every step and final parameters of both models)."""
    with tempfile.TemporaryDirectory(prefix="maga-e2e-") as tmp:
        work = Path(out_dir) if out_dir is not None else Path(tmp)
        return _launch_all([cfg], train_set, val_set, n_encoder_ranks, [work], backend, record, threads)[0]


def run_from_env(cfg: E2EConfig, train_set: BagDataset, val_set: BagDataset | None = None,
                 out_dir: str | Path | None = None, backend: str | None = None) -> E2EResult | None:
    """Entry point under torchrun (RANK / WORLD_SIZE / MASTER_ADDR set): one call per process."""
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend)
    try:
        return run_rank(cfg, train_set, val_set, out_dir, progress=dist.get_rank() == AGGREGATOR_RANK)
    finally:
        dist.destroy_process_group()


def normalised_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a - b|_1 / |b|_1 (the paper's measure); the plain L1 difference when b is all zeros."""
    denom = float(b.double().abs().sum())
    diff = float((a.double() - b.double()).abs().sum())
    return diff / denom if denom > 0 else diff


ROUNDING_ZERO = 1e-5  # a gradient whose mean |g| is below this share of the model's is zero but for rounding


def _rounding_zero(grads: dict[str, torch.Tensor]) -> set[str]:
    """Tensors whose true gradient is zero and whose computed one is rounding noise (e.g. the bias of
    a convolution feeding a train-mode BatchNorm, which the normalisation removes). Their normalised
    difference is noise over noise, so they are reported apart instead of hiding the real comparison."""
    overall = float(torch.cat([g.double().abs().flatten() for g in grads.values()]).mean())
    return {n for n, g in grads.items() if float(g.double().abs().mean()) < ROUNDING_ZERO * overall}


def _cat(tensors: dict[str, torch.Tensor], names) -> torch.Tensor:
    return torch.cat([tensors[n].double().flatten() for n in sorted(names)])


def compare_records(single: dict[str, Any], multi: dict[str, Any]) -> dict[str, Any]:
    """Largest differences between two recorded runs: loss (absolute); gradients and final parameters
    as normalised L1 per tensor (largest over tensors and steps, leaving out tensors whose gradient is
    zero but for rounding, listed in `rounding_zero`) and over the whole model at once."""
    if len(single["loss"]) != len(multi["loss"]):
        raise MagaError(f"runs differ in length: {len(single['loss'])} vs {len(multi['loss'])} steps")
    per_step, noise = [], set()
    for s, (gs, gm) in enumerate(zip(single["grads"], multi["grads"])):
        if set(gs) != set(gm):
            raise MagaError(f"step {s}: the runs have gradients for different parameters")
        zero = _rounding_zero(gs)
        noise |= zero
        diffs = {n: normalised_difference(gm[n], gs[n]) for n in gs if n not in zero}
        worst = max(diffs, key=diffs.get)
        per_step.append({"step": s, "loss_single": single["loss"][s], "loss_multi": multi["loss"][s],
                         "loss_abs_diff": abs(single["loss"][s] - multi["loss"][s]),
                         "grad_max_norm_diff": diffs[worst], "grad_worst_param": worst,
                         "grad_model_norm_diff": normalised_difference(_cat(gm, gs), _cat(gs, gs)),
                         "n_grad_tensors": len(gs)})
    ps, pm = single["params"], multi["params"]
    params = {n: normalised_difference(pm[n], ps[n]) for n in ps if n not in noise}
    worst_param = max(params, key=params.get)
    return {"steps": per_step,
            "loss_max_abs_diff": max(p["loss_abs_diff"] for p in per_step),
            "grad_max_norm_diff": max(p["grad_max_norm_diff"] for p in per_step),
            "grad_model_norm_diff": max(p["grad_model_norm_diff"] for p in per_step),
            "param_max_norm_diff": params[worst_param], "param_worst": worst_param,
            "param_model_norm_diff": normalised_difference(_cat(pm, ps), _cat(ps, ps)),
            "rounding_zero": {n: normalised_difference(pm[n], ps[n]) for n in sorted(noise)},
            "n_param_tensors": len(ps)}


def rounding_reference(single: dict[str, Any], multi: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """How far each float32 run lies from the float64 one-process run (same seed, data, K): per step,
    whole-model normalised L1 of the gradients and the absolute loss error; the final parameters.
    `float32_error_ratio`: the distributed scheme's error over the one-process scheme's, the larger of
    the loss (worst step) and the final parameters; about 1 when the two schemes are equally exact.
    Gradients after the first step are left out of it: which float32 path lands nearer the float64
    trajectory varies tenfold with reduction order (see `check_equivalence_dtypes`)."""
    errors: dict[str, Any] = {"steps": []}
    for s, g64 in enumerate(reference["grads"]):
        row = {}
        for name, run in (("single", single), ("multi", multi)):
            row[f"grad_err_{name}"] = normalised_difference(_cat(run["grads"][s], g64), _cat(g64, g64))
            row[f"loss_err_{name}"] = abs(run["loss"][s] - reference["loss"][s])
        errors["steps"].append(row)
    p64 = reference["params"]
    for name, run in (("single", single), ("multi", multi)):
        errors[f"grad_err_first_step_{name}"] = errors["steps"][0][f"grad_err_{name}"]
        errors[f"loss_err_{name}"] = max(r[f"loss_err_{name}"] for r in errors["steps"])
        errors[f"param_err_{name}"] = normalised_difference(_cat(run["params"], p64), _cat(p64, p64))
    errors["float32_error_ratio"] = max(errors[f"{k}_err_multi"] / errors[f"{k}_err_single"] for k in ("param", "loss"))
    return errors


def one_process_run(cfg: E2EConfig, train_set: BagDataset, steps: int = 3, threads: int = 1,
                    dtype: str | None = None) -> dict[str, Any]:
    """The recorded one-process run that `check_equivalence` compares against (`steps` steps, in
    `dtype` when given), on `threads` CPU threads."""
    cfg = dataclasses.replace(cfg, max_steps=steps, epochs=max(cfg.epochs, 1), dtype=dtype or cfg.dtype)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return train(cfg, train_set, record=True, progress=False).record
    finally:
        torch.set_num_threads(before)


def check_equivalence(cfg: E2EConfig, train_set: BagDataset, n_encoder_ranks: int = 2, steps: int = 3,
                      backend: str = "gloo", threads: int = 1) -> dict[str, Any]:
    """Same seed, data and K on one process and on 1 + n_encoder_ranks processes: the largest
    normalised differences of loss, gradients and parameters after `steps` steps (in cfg.dtype; see
    `check_equivalence_dtypes`, which this runs for one dtype)."""
    return check_equivalence_dtypes(cfg, train_set, (cfg.dtype,), n_encoder_ranks, steps, backend, threads)[cfg.dtype]


def check_equivalence_dtypes(cfg: E2EConfig, train_set: BagDataset, dtypes: tuple[str, ...] = ("float64", "float32"),
                             n_encoder_ranks: int = 2, steps: int = 3, backend: str = "gloo",
                             threads: int = 1) -> dict[str, dict[str, Any]]:
    """`check_equivalence` in each dtype, sharing one launch of the ranks and the one-process float64 run.

    In float64 the two schemes agree to rounding (~1e-14). In float32 they cannot be judged by their
    difference alone: this network's float32 gradient lies 1e-4..1e-3 (whole model, normalised L1)
    from the float64 one at the first step, by an amount that depends on the reduction order (thread
    count, the batch a convolution sees), and AdamW turns every gradient element whose sign is rounding
    noise into a full +-lr step, so two float32 runs that round differently drift apart step by step
    (1e-3..2e-2 by the third). Which machine rounds which way decides whether they happen to match.
    So in float32 (without amp) both schemes are also measured against the one-process float64 run
    (`rounding_reference`). Every process runs `threads` CPU threads, so a check repeats bit for bit
    on one machine."""
    cfgs = {d: dataclasses.replace(cfg, dtype=d, max_steps=steps, epochs=max(cfg.epochs, 1)) for d in dtypes}
    needs_float64 = "float64" in dtypes or ("float32" in dtypes and not cfg.amp)
    float64_run = one_process_run(cfg, train_set, steps, threads, dtype="float64") if needs_float64 else None
    with tempfile.TemporaryDirectory(prefix="maga-e2e-eq-") as tmp:
        multis = _launch_all(list(cfgs.values()), train_set, None, n_encoder_ranks, [Path(tmp) / d for d in cfgs],
                             backend, True, threads)
    out = {}
    for (dtype, c), multi in zip(cfgs.items(), multis):
        single = float64_run if dtype == "float64" else one_process_run(c, train_set, steps, threads)
        res = compare_records(single, multi.record)
        if dtype == "float32" and not c.amp:
            errors = rounding_reference(single, multi.record, float64_run)
            for row, err in zip(res["steps"], errors.pop("steps")):
                row.update(err)
            res.update(errors)
        res.update(n_encoder_ranks=n_encoder_ranks, world_size=n_encoder_ranks + 1, k=c.k, encoder=c.encoder,
                   aggregator=c.aggregator, bn=c.bn, backend=backend, dtype=dtype if not c.amp else "amp",
                   threads=threads)
        out[dtype] = res
    return out
