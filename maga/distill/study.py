"""The G2L table: teacher vs distilled student vs an undistilled student of the same size.

For each model: parameters, FLOPs per tile, tiles/s and peak memory at one batch size (measure.py),
a logistic-regression probe's AUC (adenocarcinoma vs squamous) with bootstrap CIs on held-out tiles
(TCGA test cases and held-out LC25000 clusters, pooled and per source), and the robustness index with
source = TCGA scan vs LC25000 photo. The probe is fitted on the training tiles of both sources (tiles the
student was distilled on, whose labels distillation never saw).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from maga_core import encoders
from maga_core.config import save_config, to_jsonable
from maga_core.data.tiles import tile_table
from maga_core.device import without_runtime
from maga_core.encoders import build
from maga_core.encoders.base import load_torch_file
from maga_core.encoders.mobilenet import Prepare
from maga_core.errors import MagaError
from maga_core.stats import bootstrap_metrics
from maga import records
from maga.distill.measure import count_params, flops_per_tile, measure_run
from maga.distill.robustness import robustness_curve
from maga.distill.train import DistillConfig, config_from_dict, distill, read_tile, work_dir_for
from maga.provenance import write_record
from maga.records import paper_results
from maga.runs import run_key

CLASSES = ("adenocarcinoma", "squamous")
EVAL_DATASETS = ("uni_tcga_luadlusc", "lc25000_lung_224_dedup")
# Our measures -> the seed's keys under g2l_distillation in paper_results.yaml (memory: percent there).
SEED_KEYS = {"speedup": "inference_speedup", "memory_reduction": "gpu_memory_reduction_percent",
             "param_ratio": "student_fraction_of_teacher_params"}


@dataclass
class StudyConfig:
    distill: DistillConfig = field(default_factory=DistillConfig)
    extra_models: list[str] = field(default_factory=list)  # more registry encoders for the table
    k: int = 10
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20, 40])
    max_eval_tiles: int = 0          # 0: all; else a seeded per-split subset (smoke runs)
    probe_c: float = 0.1
    n_boot: int = 500
    measure_batch_size: int = 32
    measure_batches: int = 4
    measure_repeats: int = 3         # teacher and students measured alternately, median reported
    measure_threads: int = 1
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.distill, dict):
            self.distill = config_from_dict(self.distill)


def config_hash(obj: Any) -> str:
    return run_key(without_runtime(to_jsonable(obj)), 12)


def ensure_distilled(cfg: DistillConfig, root: Path, progress: bool = True) -> Path:
    """The distilled checkpoint for `cfg` under `root` (trained once, then reused; resumes if cut)."""
    out = root / f"student-{config_hash(cfg)}.pt"
    distill(cfg, out, progress=progress)
    return out


def eval_table(max_tiles: int = 0, seed: int = 0) -> pd.DataFrame:
    """Adenocarcinoma and squamous tiles of both sources, with split (train/test), y and source."""
    df = pd.concat([tile_table(d) for d in EVAL_DATASETS], ignore_index=True)
    df = df[df["class"].isin(CLASSES)].copy()
    df["y"] = df["class"].map({c: i for i, c in enumerate(CLASSES)})
    if max_tiles:
        rng = np.random.default_rng(seed)
        keep = [rng.choice(idx, min(len(idx), max(2, max_tiles // 4)), replace=False)
                for idx in df.groupby(["split", "source", "class"]).indices.values()]
        df = df.iloc[np.sort(np.concatenate(keep))]
    return df.sort_values(["split", "source", "path"]).reset_index(drop=True)


def embed(encoder, prepare: Prepare, paths: list[str], batch_size: int, known: dict[str, np.ndarray] | None = None,
          desc: str = "embed", progress: bool = True) -> np.ndarray:
    """[N, D] float32 embeddings of the clean tiles (those in `known` are taken from it)."""
    known = known or {}
    todo = [p for p in paths if p not in known]
    out = dict(known)
    encoder.eval()
    for i in tqdm(range(0, len(todo), batch_size), desc=desc, unit="batch", disable=not progress or not todo):
        chunk = todo[i:i + batch_size]
        with torch.inference_mode():
            feats = encoder(prepare([read_tile(p) for p in chunk])).float().numpy()
        out.update(zip(chunk, feats))
    return np.stack([out[p] for p in paths]).astype(np.float32)


def probe(train_x, train_y, test_x, test_y, c: float, n_boot: int, seed: int, groups: dict[str, np.ndarray]):
    """Standardised logistic regression; AUC with bootstrap CI overall and per held-out group."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
    clf.fit(train_x, train_y)
    prob = clf.predict_proba(test_x)[:, 1]
    out = {}
    for name, mask in {"all": np.ones(len(test_y), bool), **groups}.items():
        m = bootstrap_metrics(test_y[mask], prob[mask], n_boot=n_boot, seed=seed)["metrics"]
        out[name] = {"auc": m["auc"]["value"], "auc_low": m["auc"]["ci_low"], "auc_high": m["auc"]["ci_high"],
                     "accuracy": m["accuracy"]["value"], "n": int(mask.sum())}
    return out


def _teacher_cache(ckpt: Path) -> dict[str, np.ndarray]:
    """The teacher's clean-tile embeddings computed during distillation (same view, same size)."""
    f = work_dir_for(ckpt) / "teacher_targets.pt"
    if not f.exists():
        return {}
    saved = torch.load(f, map_location="cpu", weights_only=False)
    return dict(zip(saved["kept"], saved["targets"].numpy()))


def _models(cfg: StudyConfig, ckpt: Path) -> list[dict]:
    """Who is compared, each at the input size it is deployed at (both students at the same size)."""
    d = cfg.distill
    teacher_px = d.teacher_px or encoders.spec(d.teacher).input_px
    student_px = d.input_px or teacher_px
    rows = [{"model": "teacher", "name": d.teacher, "weights": d.teacher_weights, "px": teacher_px},
            {"model": "distilled student", "name": "distilled", "weights": str(ckpt), "px": student_px},
            {"model": "undistilled student", "name": d.student, "weights": "random", "px": student_px}]
    rows += [{"model": n, "name": n, "weights": None, "px": encoders.spec(n).input_px} for n in cfg.extra_models]
    return rows


def _measure(models: list[dict], cfg: StudyConfig, progress: bool) -> dict[str, dict]:
    """Alternate the models `measure_repeats` times (a shared, busy CPU drifts); medians per model."""
    runs: dict[str, list] = {m["model"]: [] for m in models}
    total = cfg.measure_repeats * len(models)
    with tqdm(total=total, desc="measure", unit="run", disable=not progress) as bar:
        for _ in range(cfg.measure_repeats):
            for m in models:
                runs[m["model"]].append(measure_run(
                    m["name"], m["weights"], batch_size=cfg.measure_batch_size, input_px=m["px"],
                    batches=cfg.measure_batches, threads=cfg.measure_threads))
                bar.update(1)
    out = {}
    for name, rs in runs.items():
        cuda = [r.cuda_peak_mb for r in rs if r.cuda_peak_mb is not None]
        out[name] = {"tiles_per_s": float(np.median([r.tiles_per_s for r in rs])),
                     "tiles_per_s_runs": [r.tiles_per_s for r in rs],
                     "rss_rise_mb": float(np.median([r.rss_rise_mb for r in rs])),
                     "cuda_peak_mb": float(np.median(cuda)) if cuda else None,
                     "device": rs[0].device, "batch_size": rs[0].batch_size, "threads": rs[0].threads}
    return out


def run_study(cfg: StudyConfig, root: Path, progress: bool = True) -> dict:
    """Distil (or reuse), embed, probe, robustness, cost. Results are cached in `root` by config."""
    out_dir = root / f"study-{config_hash(cfg)}"
    result_file = out_dir / "results.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    ckpt = ensure_distilled(cfg.distill, root, progress=progress)
    tiles = eval_table(cfg.max_eval_tiles, cfg.seed)
    train, test = tiles[tiles["split"] == "train"], tiles[tiles["split"] == "test"]
    if train.empty or test.empty:
        raise MagaError("no train or held-out adenocarcinoma/squamous tiles", ", ".join(EVAL_DATASETS))
    groups = {src: (test["source"] == src).to_numpy() for src in sorted(test["source"].unique())}
    models = _models(cfg, ckpt)
    teacher_px = models[0]["px"]
    rows, curves, history = [], {}, []
    for m in models:
        enc = build(m["name"], m["weights"], **({"seed": cfg.seed} if m["weights"] == "random" else {}))
        px = m["px"]
        prepare = Prepare(px, enc.spec.mean, enc.spec.std)
        known = _teacher_cache(ckpt) if m["model"] == "teacher" else None
        x_train = embed(enc, prepare, train["path"].tolist(), cfg.batch_size, known, f"{m['model']} train", progress)
        x_test = embed(enc, prepare, test["path"].tolist(), cfg.batch_size, known, f"{m['model']} test", progress)
        auc = probe(x_train, train["y"].to_numpy(), x_test, test["y"].to_numpy(), cfg.probe_c, cfg.n_boot,
                    cfg.seed, groups)
        ks = sorted({k for k in (*cfg.ks, cfg.k) if k < len(test)})
        curve = robustness_curve(x_test, test["class"].to_numpy(), test["source"].to_numpy(), ks)
        curves[m["model"]] = [dataclasses.asdict(r) for r in curve]
        ri = next(r for r in curve if r.k == cfg.k)
        rows.append({"model": m["model"], "encoder": m["name"], "input_px": px, "params": count_params(enc),
                     "gflops_per_tile": flops_per_tile(enc, px) / 1e9,
                     "gflops_at_teacher_px": flops_per_tile(enc, teacher_px) / 1e9,
                     "auc": auc, "robustness_index": ri.index, "so": ri.so, "os": ri.os})
        if m["model"] == "distilled student":
            history = [{k: v for k, v in h.items() if k != "step_losses"} for h in enc.history]
    cost = _measure(models, cfg, progress)
    for r in rows:
        r.update(cost[r["model"]])
    result = {"rows": rows, "robustness_curves": curves, "history": history, "checkpoint": str(ckpt),
              "k": cfg.k, "n_train": len(train), "n_test": len(test),
              "n_test_by_source": {k: int(v.sum()) for k, v in groups.items()}}
    save_config(cfg, out_dir)
    write_record(result, result_file, config=cfg)
    return json.loads(result_file.read_text())


def table(result: dict) -> pd.DataFrame:
    """One row per model, teacher first; ratios relative to the teacher."""
    rows = result["rows"]
    t = rows[0]
    out = []
    for r in rows:
        row = {"model": r["model"], "encoder": r["encoder"], "input px": r["input_px"],
               "params (M)": r["params"] / 1e6, "params / teacher": r["params"] / t["params"],
               "GFLOPs / tile": r["gflops_per_tile"], "tiles/s": r["tiles_per_s"],
               "speed-up": r["tiles_per_s"] / t["tiles_per_s"],
               "peak memory rise (MB)": r["rss_rise_mb"],
               "memory saved": 1 - r["rss_rise_mb"] / t["rss_rise_mb"]}
        if r.get("cuda_peak_mb") is not None:
            row["CUDA peak (MB)"] = r["cuda_peak_mb"]
        for g, a in r["auc"].items():
            row[f"AUC {g}"] = f"{a['auc']:.3f} [{a['auc_low']:.3f}, {a['auc_high']:.3f}]"
        row[f"robustness index (k={result['k']})"] = r["robustness_index"]
        out.append(row)
    return pd.DataFrame(out).set_index("model")


def measured_claims(result: dict) -> dict[str, float]:
    """The seed's three cost measures for this run (distilled student vs teacher)."""
    t, s = result["rows"][0], result["rows"][1]
    return {"speedup": s["tiles_per_s"] / t["tiles_per_s"],
            "memory_reduction": 1 - s["rss_rise_mb"] / t["rss_rise_mb"],
            "param_ratio": s["params"] / t["params"]}


def claims(result: dict) -> pd.DataFrame:
    """The seed's three cost claims next to what this run measured (distilled student vs teacher)."""
    seed = paper_results()["g2l_distillation"]
    here = measured_claims(result)
    labels = {"speedup": "inference speed-up (x)", "memory_reduction": "memory reduction",
              "param_ratio": "student params / teacher params"}
    scale = {"memory_reduction": 0.01}  # the seed gives a percentage
    return pd.DataFrame([{"claim": labels[k], "seed (G2L)": seed[key] * scale.get(k, 1), "here": here[k]}
                         for k, key in SEED_KEYS.items()]).set_index("claim")


def save_summary(result: dict, runs: Path) -> Path:
    """Hand the cost figures to the reproduction summary (chapter 09), with how our setting differs."""
    here = measured_claims(result)
    t, s = result["rows"][0], result["rows"][1]
    ckpt = load_torch_file(result["checkpoint"], "distilled student checkpoint")
    n_tiles = ckpt["n_tiles"]
    figures = {SEED_KEYS[k]: round(v * (100 if k == "memory_reduction" else 1), 4) for k, v in here.items()}
    return records.save_results(
        "06_distillation", runs=runs, figures={"g2l_distillation": figures},
        notes={"g2l_distillation": f"{t['encoder']} (ImageNet) teacher at {t['input_px']} px, {ckpt['student_arch']} "
                                   f"student at {s['input_px']} px, distilled on {n_tiles} tiles",
               "g2l_distillation.inference_speedup": f"tiles/s at batch {t['batch_size']} on {t['device']} "
                                                    f"({t['threads']} thread); the seed times a GPU",
               "g2l_distillation.gpu_memory_reduction_percent": f"peak RSS rise on {t['device']} (no GPU here)",
               "g2l_distillation.slides_used": f"the student is distilled on {n_tiles} tiles of the tile datasets, "
                                               "not on slides"})


def study_config(P: dict) -> StudyConfig:
    """A StudyConfig from a chapter's preset dict (keys: distill {DistillConfig fields}, measure
    {batch_size, batches, repeats, threads}, and StudyConfig's own fields)."""
    d = config_from_dict(dict(P.get("distill") or {}))
    m = P.get("measure") or {}
    names = {f.name for f in dataclasses.fields(StudyConfig)} - {"distill"}
    own = {k: v for k, v in P.items() if k in names}
    own.update({f"measure_{k}": v for k, v in m.items()})
    return StudyConfig(distill=d, **own)


def ensure_study(P: dict, progress: bool = True) -> dict:
    """The chapter's study under P["runs"]/distill (computed once, then read back)."""
    return run_study(study_config(P), Path(P["runs"]) / "distill", progress=progress)


def _vs(a: float, b: float) -> str:
    return "above" if a > b else "below" if a < b else "equal to"


def verdict(result: dict) -> str:
    """Markdown bullets: each seed claim against this run's numbers, worded from the numbers."""
    t, s, u = result["rows"][0], result["rows"][1], result["rows"][2]
    c = claims(result)["here"]
    seed = paper_results()["g2l_distillation"]
    lines = [
        f"- **Size**: the student has {s['params']:,} parameters, {c['student params / teacher params']:.1%} of "
        f"the teacher's {t['params']:,} (seed: about {seed['student_fraction_of_teacher_params']:.0%}).",
        f"- **Speed**: {s['tiles_per_s']:.1f} vs {t['tiles_per_s']:.1f} tiles/s at batch {t['batch_size']} on "
        f"{t['device']}: {c['inference speed-up (x)']:.1f}x (seed: {seed['inference_speedup']:g}x on a GPU); FLOPs per tile "
        f"{s['gflops_per_tile']:.3f} vs {t['gflops_per_tile']:.3f} G"
        + (f" (the student runs at {s['input_px']} px, the teacher at {t['input_px']} px; at the teacher's size "
           f"the student needs {s['gflops_at_teacher_px']:.3f} G)" if s["input_px"] != t["input_px"] else "") + ".",
        f"- **Memory**: peak RSS rise {s['rss_rise_mb']:.0f} vs {t['rss_rise_mb']:.0f} MB: "
        f"{c['memory reduction']:.0%} less (seed: {seed['gpu_memory_reduction_percent']:g}% less GPU memory).",
    ]
    for g in s["auc"]:
        a_t, a_s, a_u = t["auc"][g]["auc"], s["auc"][g]["auc"], u["auc"][g]["auc"]
        overlap = s["auc"][g]["auc_low"] <= t["auc"][g]["auc_high"] and t["auc"][g]["auc_low"] <= s["auc"][g]["auc_high"]
        lines.append(
            f"- **Probe AUC ({g}, n={s['auc'][g]['n']})**: teacher {a_t:.3f}, distilled {a_s:.3f}, undistilled "
            f"{a_u:.3f}; the distilled student is {_vs(a_s, a_t)} the teacher "
            f"({'CIs overlap' if overlap else 'CIs do not overlap'}) and {_vs(a_s, a_u)} the "
            "same-size undistilled student.")
    ri = {r["model"]: r["robustness_index"] for r in result["rows"]}
    lines.append(
        f"- **Robustness index (k={result['k']})**: teacher {ri['teacher']:.2f}, distilled "
        f"{ri['distilled student']:.2f}, undistilled {ri['undistilled student']:.2f} (seed: the distilled model is "
        f"more robust than the teacher: {'holds' if ri['distilled student'] > ri['teacher'] else 'does not hold'} "
        "here).")
    if ri["distilled student"] > ri["teacher"] and s["auc"]["all"]["auc"] < t["auc"]["all"]["auc"]:
        lines.append(
            "- An index near 1 is also what an embedding without structure gives (neighbours drawn at random "
            "from a balanced design); with a lower AUC than the teacher's, the student's higher index says "
            "it keeps less of the source *and* less of the biology, not that biology dominates.")
    return "\n".join(lines)
