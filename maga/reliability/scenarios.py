"""The interrupted commands, each with small real inputs, its argv and its comparison with a reference
run: `maga extract` over a folder of generated slides (bit-equal features), `maga align` on real tiles
(bit-equal student weights and history: its epochs are deterministic on CPU), `maga mil` on seeded
feature bags (bit-equal fold predictions), and `maga cohort run` on a small labelled cohort of generated
slides with upstream-style label and fold files (bit-equal features, fold predictions and table)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from maga_core.data.features import read_features, write_features
from maga_core.data.tiles import tile_table
from maga_core.errors import MagaError
from maga.reliability.kills import Compare, child_env, first_write_s, maga_argv
from maga.slide_tools.generator import generate_slide

ENCODER = "efficientnet_lite0"


@dataclass
class Scenario:
    name: str
    argv: list[str]  # with OUT standing for the output path
    out_name: str  # the output path inside a work folder
    writes: str  # glob of what it writes (temporaries included), for timing the kills
    compare_with: Callable[[Path], Compare]  # reference output -> compare(out, final)

    def command(self, out: Path) -> list[str]:
        return [str(out) if a == "OUT" else a for a in self.argv]


def _visible(folder: Path, pattern: str) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob(pattern))
            if not any(part.startswith(".") for part in p.relative_to(folder).parts)} if folder.exists() else {}


def _compare_features(ref: Path) -> Compare:
    expected = {k: read_features(p) for k, p in _visible(ref, "*.h5").items()}

    def compare(out: Path, final: bool) -> tuple[list[str], float]:
        found, problems, diff = _visible(out, "*.h5"), [], 0.0
        for key, path in found.items():
            try:
                got = read_features(path)
            except MagaError as exc:
                problems.append(f"{key} looks finished but does not read: {exc}")
                continue
            want = expected.get(key)
            if want is None or got.features.shape != want.features.shape or not np.array_equal(got.coords, want.coords):
                problems.append(f"{key} differs in shape or coords from the uninterrupted run")
                continue
            diff = max(diff, float(np.abs(got.features - want.features).max(initial=0.0)))
            if not np.array_equal(got.features, want.features):
                problems.append(f"{key} features differ from the uninterrupted run")
        if final and set(found) != set(expected):
            problems.append(f"outputs {sorted(found)} != {sorted(expected)}")
        return problems, diff
    return compare


def _compare_checkpoint(ref: Path) -> Compare:
    import torch

    want = torch.load(ref, map_location="cpu", weights_only=True)

    def compare(out: Path, final: bool) -> tuple[list[str], float]:
        if not out.exists():
            return (["checkpoint missing"] if final else []), 0.0
        try:
            got = torch.load(out, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a half-written checkpoint is exactly what we look for
            return [f"checkpoint looks finished but does not load ({type(exc).__name__})"], 0.0
        e = int(got["epoch"])
        problems = [] if got["history"] == [
            {**row, "seconds": got["history"][i]["seconds"]} for i, row in enumerate(want["history"][:e])] else [
            f"epoch {e} history differs from the uninterrupted run"]
        if final:
            diff = max(float((got["student"][k].float() - v.float()).abs().max()) for k, v in want["student"].items())
            if diff != 0.0 or e != int(want["epoch"]):
                problems.append(f"final student differs (epoch {e}, max |diff| {diff:g})")
            return problems, diff
        return problems, 0.0
    return compare


def _compare_cv(ref: Path) -> Compare:
    import pandas as pd

    expected = {k: pd.read_csv(p) for k, p in _visible(ref, "predictions.csv").items()}

    def compare(out: Path, final: bool) -> tuple[list[str], float]:
        found, problems, diff = _visible(out, "predictions.csv"), [], 0.0
        for key, path in found.items():
            try:
                got = pd.read_csv(path)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{key} looks finished but does not read ({type(exc).__name__})")
                continue
            want = expected[key]
            probs = [c for c in want.columns if c.startswith("prob_")]
            if got.shape != want.shape or not got.drop(columns=probs).equals(want.drop(columns=probs)):
                problems.append(f"{key} differs from the uninterrupted run")
                continue
            diff = max(diff, float(np.abs(got[probs].to_numpy() - want[probs].to_numpy()).max()))
            if diff:
                problems.append(f"{key} probabilities differ by {diff:g}")
        if final:
            if set(found) != set(expected):
                problems.append(f"predictions {sorted(found)} != {sorted(expected)}")
            for key, path in _visible(ref, "summary.json").items():
                if json.loads((out / key).read_text())["pooled"] != json.loads(path.read_text())["pooled"]:
                    problems.append(f"{key}: pooled summary differs from the uninterrupted run")
        return problems, diff
    return compare


def _compare_cohort(ref: Path) -> Compare:
    """Features (slides and case bags), fold predictions and summaries, and the final table."""
    import pandas as pd

    parts = (_compare_features(ref), _compare_cv(ref))
    table = pd.read_csv(ref / "reproduction_table.csv")

    def compare(out: Path, final: bool) -> tuple[list[str], float]:
        problems, diff = [], 0.0
        for part in parts:
            p, d = part(out, final)
            problems, diff = problems + p, max(diff, d)
        if (out / "reproduction_table.csv").exists() and not pd.read_csv(out / "reproduction_table.csv").equals(table):
            problems.append("reproduction_table.csv differs from the uninterrupted run")
        elif final and not (out / "reproduction_table.csv").exists():
            problems.append("reproduction_table.csv missing")
        return problems, diff
    return compare


def make_slides(folder: Path, n: int, side: int) -> Path:
    """`n` seeded slides of side x side px at 0.5 um/px mosaicked from real LC25000 tiles."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        generate_slide(folder / f"slide_{i:02d}.tif", side, side, seed=100 + i, progress=False)
    for extra in folder.glob("*.json"):
        extra.unlink()
    return folder


def make_tiles(folder: Path, n: int) -> Path:
    """`n` real LC25000 tiles (224 px, 0.5 um/px), the first of each class in turn."""
    table = tile_table("lc25000_lung_224_dedup")
    picks = table.groupby("label", sort=True).head(-(-n // table["label"].nunique())).head(n)
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(picks["path"]):
        shutil.copyfile(path, folder / f"tile_{i:02d}{Path(path).suffix}")
    return folder


def make_bags(folder: Path, n_slides: int, dim: int = 32, seed: int = 0) -> tuple[Path, Path]:
    """Seeded bags of two classes (class 1 shifts a few instances) and their labels CSV."""
    rng = np.random.default_rng(seed)
    feats = folder / "features"
    rows = ["slide,label,patient"]
    for i in range(n_slides):
        label, n = i % 2, int(rng.integers(20, 60))
        x = rng.normal(size=(n, dim)).astype(np.float32)
        x[: n // 4, :4] += 1.5 * label
        write_features(feats / f"s{i:02d}.h5", x, coords=np.stack([np.arange(n) * 256, np.zeros(n)], 1), slide=f"s{i:02d}")
        rows.append(f"s{i:02d},{label},p{i:02d}")
    labels = folder / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    return feats, labels


UPSTREAM_LABEL = {0: "TCGA_LUAD_ALL", 1: "TCGA_LUSC_ALL"}
TUMOUR = {0: "adenocarcinoma", 1: "squamous"}


def cohort_cases(n: int) -> list[str]:
    return [f"TCGA-AA-{i:04d}" for i in range(n)]


def make_cohort(root: Path, n_cases: int, n_folds: int, side: int = 768, faults: bool = False) -> tuple[Path, Path]:
    """(slides, upstream) of a labelled cohort: `n_cases` generated slides named by case id (alternating
    LUAD/LUSC tumour), the upstream label file and `n_folds` train/val/test fold files. With `faults`,
    case 0 has a second slide, a listed case's slide is corrupt and one slide belongs to no listed case."""
    cases = cohort_cases(n_cases)
    slides, up = root / "slides", root / "upstream"
    for i, case in enumerate(cases):
        generate_slide(slides / f"{case}-01Z-00-DX1.tif", side, side, seed=i, tissue_fraction=0.7,
                       tumour_fraction=0.6, tumour_class=TUMOUR[i % 2], pool_size=6, progress=False)
    listed = list(cases)
    if faults:
        generate_slide(slides / f"{cases[0]}-01Z-00-DX2.tif", side - 128, side, seed=99, tissue_fraction=0.7,
                       tumour_class=TUMOUR[0], pool_size=6, progress=False)
        (slides / "TCGA-AA-0100-01Z-00-DX1.tif").write_bytes(b"II*\x00 not a slide")
        generate_slide(slides / "OTHER-0001.tif", 512, 512, seed=7, pool_size=6, progress=False)
        listed.append("TCGA-AA-0100")
    for extra in slides.glob("*.json"):
        extra.unlink()
    (up / "label").mkdir(parents=True, exist_ok=True)
    rows = [f"{c},{UPSTREAM_LABEL[i % 2]}" for i, c in enumerate(listed)]
    (up / "label" / "TCGA_Lung_label.csv").write_text("\n".join(rows) + "\n")
    folds = up / "nfold" / "tcga_lung"
    folds.mkdir(parents=True, exist_ok=True)
    per = n_cases // n_folds
    for k in range(n_folds):
        nxt = (k + 1) % n_folds
        test, val = cases[per * k: per * (k + 1)], cases[per * nxt: per * (nxt + 1)]
        train = [c for c in cases if c not in test + val] + listed[n_cases:]
        for part, ids in (("train", train), ("val", val), ("test", test)):
            (folds / f"flod-{k}-{part}.csv").write_text("\n".join(ids) + "\n")
    return slides, up


def tiny_student(tiles: str | Path, out: Path) -> Path:
    """A one-epoch MAGA student on 8 tiles of `tiles` (a folder or a tile dataset), for runs that need
    a student, not for its quality."""
    # lazy: only the scenarios that need a student load the trainer (saves start-up time of the others)
    from maga_core.align.train import AlignConfig, train

    return train(AlignConfig(tiles=[str(tiles)], tile_mpp=0.5, max_tiles=8, epochs=1, batch_size=8, device="cpu"),
                 out, progress=False)


def scenarios(work: Path) -> list[Scenario]:
    """The four interrupted commands on small inputs made under `work` (the test and the benchmark
    differ in how many kills, not in the runs)."""
    slides = make_slides(work / "slides", 2, 1024)
    tiles = make_tiles(work / "tiles", 6)
    feats, labels = make_bags(work / "bags", 12)
    cohort, upstream = make_cohort(work / "cohort", 6, 3)
    student = tiny_student(tiles, work / "student" / "student.pt")
    common = ["--device", "cpu", "--precision", "fp32"]
    return [
        Scenario("extract", maga_argv("extract", "--encoder", ENCODER, "--mag", "5",
                                      "--input", str(slides), "--out", "OUT", "--workers", "0",
                                      "--batch-size", "8", "--no-progress", *common), "features", "*.h5*", _compare_features),
        Scenario("align", maga_argv("align", "--teacher", ENCODER, "--mag", "5", "--tiles", str(tiles), "--mpp", "0.5",
                                    "--epochs", "3", "--batch-size", "4", "--augment", "none",
                                    "--seed", "3", "--out", "OUT", *common), "student.pt", "*student.pt*", _compare_checkpoint),
        Scenario("mil", maga_argv("mil", "--model", "abmil", "--features", str(feats), "--labels", str(labels),
                                  "--folds", "3", "--epochs", "4", "--bootstrap", "20", "--quiet", "--out", "OUT",
                                  *common), "cv", "*predictions.csv*", _compare_cv),
        Scenario("cohort", maga_argv("cohort", "run", "--slides", str(cohort), "--upstream", str(upstream),
                                     "--student", str(student), "--models", "abmil", "--epochs", "2",
                                     "--bootstrap", "20", "--workers", "0", "--out", "OUT", "--quiet", *common),
                 "cohort_run", "*.h5*", _compare_cohort),
    ]


def reference(scenario: Scenario, work: Path) -> tuple[Path, float, float, Compare]:
    """An uninterrupted run: its output, when it began writing, its wall time, and the comparison."""
    ref = work / "reference" / scenario.out_name
    ref.parent.mkdir(parents=True, exist_ok=True)
    log = work / "reference" / f"{scenario.name}.log"
    rc, start, seconds = first_write_s(scenario.command(ref), ref, scenario.writes, child_env(), log)
    if rc != 0:
        raise RuntimeError(f"reference run of {scenario.name} exited {rc}: {log.read_text()[-2000:]}")
    return ref, start, seconds, scenario.compare_with(ref)
