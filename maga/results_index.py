"""The records under results/: which command makes each one (`MAKERS`, what `make results` runs), and
whether each is still current (`status`): a record is stale when it carries no provenance, or when a
module it loaded has changed (or moved away) between its commit and HEAD."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from maga_core.config import atomic_path
from maga_core.errors import MagaError
from maga.provenance import (REPO_ROOT, SIDECAR_SUFFIX, git, provenance, read_provenance, sidecar_path,
                             write_sidecar)

RESULTS_DIR = REPO_ROOT / "results"
# Files of results/ that are not records.
NOT_RECORDS = {"README.md", "disclosures.yaml"}


@dataclass(frozen=True)
class Maker:
    """How to remake some records: argv steps run from the checkout (`{results}`, `{work}`, `{python}`
    substituted), `stdout` the record that takes the last step's output, `minutes` the expected time on
    the 2-core development machine (`maga results make --max-minutes` skips the longer ones)."""
    name: str
    files: tuple[str, ...]
    steps: tuple[tuple[str, ...], ...]
    minutes: float
    stdout: str | None = None


MAGA = ("{python}", "-m", "maga.cli")
BUILD = ("{python}", "-m", "maga.book.build")
_MIL = ("auc", "delong", "placement", "selection")
_ABLATION = {"defaults": (), "no_flips": ("--augment", "none"),
             "previous_defaults": ("--augment", "none", "--taps", "blocks.1,blocks.2,blocks.4",
                                   "--tap-weights", "1,5,10", "--pooled-weight", "200"),
             "upstream_weights_with_flips": ("--taps", "blocks.1,blocks.2,blocks.4", "--tap-weights", "1,5,10",
                                             "--pooled-weight", "200")}

MAKERS: tuple[Maker, ...] = (
    Maker("telepath_smoke", ("telepath_smoke.json",),
          (BUILD + ("--preset", "smoke", "--only", "08"),
           MAGA + ("results", "collect", "runs/smoke/telepath/telepath.json", "{results}/telepath_smoke.json")),
          minutes=3),
    Maker("bench_extract", ("bench_extract.json",),
          (MAGA + ("bench", "extract", "--baseline", "--ideas", "--json", "--out", "{results}/bench_extract.json"),),
          minutes=8),
    Maker("bench_datapath", ("bench_datapath.json",),
          (MAGA + ("bench", "datapath", "--json", "--reader-of-record", "--out", "{results}/bench_datapath.json"),),
          minutes=3),
    Maker("reliability", ("reliability.json",),
          (MAGA + ("bench", "reliability", "--json", "--out", "{results}/reliability.json"),), minutes=30),
    Maker("maga_bench", ("maga_bench.json",),
          # the workdir of maga_mags: its 5x students are these (trained once, whichever record is made first)
          (MAGA + ("bench", "maga", "--json", "--workdir", "{work}/maga_mags", "--modes", "native,upsample",
                   "--out", "{results}/maga_bench.json"),), minutes=25),
    Maker("maga_selection", ("maga_selection.json",),
          (MAGA + ("bench", "maga-select", "--json", "--workdir", "{work}/maga_select",
                   "--out", "{results}/maga_selection.json"),), minutes=90),
    Maker("maga_ablation", ("maga_ablation.json",),
          tuple(MAGA + ("bench", "maga", "--json", "--workdir", f"{{work}}/ablation_{k}", "--modes", "native", *a,
                        "--out", f"{{work}}/ablation_{k}.json") for k, a in _ABLATION.items())
          + (MAGA + ("results", "combine", "{results}/maga_ablation.json",
                     *(f"{k}={{work}}/ablation_{k}.json" for k in _ABLATION)),), minutes=60),
    Maker("book_demo", ("book_demo_build.txt",), (BUILD + ("--preset", "demo"),), minutes=35,
          stdout="book_demo_build.txt"),
    Maker("mil_evidence_demo", tuple(f"mil_evidence_demo_{t}.csv" for t in _MIL) + ("mil_evidence_demo_config.json",),
          (BUILD + ("--preset", "demo", "--only", "04"),
           MAGA + ("results", "collect-mil", "--preset", "demo", "{results}")), minutes=15),
    Maker("reproduction_summary_demo", ("reproduction_summary_demo.csv",),
          (MAGA + ("results", "summary", "--preset", "demo", "{results}/reproduction_summary_demo.csv"),),
          minutes=1),
    Maker("maga_mags", ("maga_mags.json",),  # both students at four magnifications: ~15 min per upsample one here
          (MAGA + ("bench", "maga", "--json", "--workdir", "{work}/maga_mags", "--mags", "10,5,2.5,1.25",
                   "--modes", "native,upsample", "--out", "{results}/maga_mags.json"),), minutes=85),
    Maker("g2l", ("g2l.json",),
          (MAGA + ("bench", "g2l", "--preset", "demo", "--epochs", "3", "--json", "--workdir", "{work}/g2l",
                   "--out", "{results}/g2l.json"),), minutes=30),
    Maker("e2e_k_sweep", ("e2e_k_sweep.json",),
          (MAGA + ("bench", "e2e-k", "--preset", "demo", "--json", "--workdir", "{work}/e2e_k",
                   "--out", "{results}/e2e_k_sweep.json"),), minutes=6),
    Maker("telepath_demo", ("telepath_demo.json",),
          (MAGA + ("bench", "telepath", "--preset", "demo", "--json", "--out", "{results}/telepath_demo.json"),),
          minutes=12),
)


@dataclass
class RecordStatus:
    file: str
    commit: str | None
    command: str | None
    time: str | None
    state: str  # current | stale (no provenance) | stale (code changed) | stale (modules moved) | stale (...)
    changed: list[str]
    maker: str | None

    @property
    def stale(self) -> bool:
        return self.state != "current"


def records(results_dir: Path = RESULTS_DIR) -> list[Path]:
    """Every record file under results/ (sidecars and the folder's own texts excluded)."""
    return sorted(p for p in Path(results_dir).iterdir() if p.is_file() and p.name not in NOT_RECORDS
                  and not p.name.endswith(SIDECAR_SUFFIX) and not p.name.startswith("."))


def staleness(prov: dict[str, Any] | None, repo: Path = REPO_ROOT) -> tuple[str, list[str]]:
    """(state, modules that changed) of a record with provenance `prov` against the repo's HEAD."""
    if not prov:
        return "stale (no provenance)", []
    commit, modules = prov.get("commit"), list(prov.get("modules") or [])
    if not commit:
        return "stale (made outside a git checkout)", []
    if git("cat-file", "-e", f"{commit}^{{commit}}", repo=repo) is None:
        return f"stale (commit {commit[:10]} not in this repository)", []
    if not modules:
        return "stale (no modules recorded)", []
    diff = git("diff", "--no-renames", "--name-status", commit, "HEAD", "--", *modules, repo=repo) or ""
    moved = [line.split("\t")[-1] for line in diff.splitlines() if line.startswith("D")]
    changed = [line.split("\t")[-1] for line in diff.splitlines() if line and not line.startswith("D")]
    if moved:
        return "stale (modules moved)", moved + changed
    if changed:
        return "stale (code changed)", changed
    if prov.get("dirty"):
        return "stale (made from uncommitted changes)", []
    return "current", []


def maker_of(name: str) -> Maker | None:
    return next((m for m in MAKERS if name in m.files), None)


def status(results_dir: Path = RESULTS_DIR, repo: Path = REPO_ROOT) -> list[RecordStatus]:
    out = []
    for path in records(results_dir):
        prov = read_provenance(path)
        state, changed = staleness(prov, repo)
        maker = maker_of(path.name)
        out.append(RecordStatus(path.name, (prov or {}).get("commit"), (prov or {}).get("command"),
                                (prov or {}).get("time"), state, changed, maker.name if maker else None))
    return out


def status_json(rows: Sequence[RecordStatus]) -> list[dict[str, Any]]:
    return [{**asdict(r), "stale": r.stale} for r in rows]


def chosen(names: Sequence[str] = (), max_minutes: float | None = None) -> list[Maker]:
    unknown = [n for n in names if n not in {m.name for m in MAKERS}]
    if unknown:
        raise MagaError(f"no record maker named {', '.join(unknown)} (choose from "
                        f"{', '.join(m.name for m in MAKERS)})", "maga results make")
    picked = [m for m in MAKERS if not names or m.name in names]
    return [m for m in picked if max_minutes is None or names or m.minutes <= max_minutes]


def make(makers: Sequence[Maker], work: Path, results_dir: Path = RESULTS_DIR,
         progress: Callable[[str], None] = print) -> list[tuple[str, str]]:
    """Run each maker's steps from the checkout; a failing maker is reported and the others still run.
    Returns (maker, error) for the failures."""
    failures = []
    subs = {"{python}": sys.executable, "{results}": str(results_dir), "{work}": str(work)}
    for m in makers:
        progress(f"{m.name}: {', '.join(m.files)} (about {m.minutes:g} min)")
        try:
            for i, step in enumerate(m.steps):
                argv = [_fill(a, subs) for a in step]
                last = i == len(m.steps) - 1
                if m.stdout and last:
                    out = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True)
                    _check(out.returncode, argv, out.stderr)
                    _write_text_record(Path(results_dir) / m.stdout, out.stdout, argv)
                else:
                    _check(subprocess.run(argv, cwd=REPO_ROOT).returncode, argv, "")
        except MagaError as exc:
            failures.append((m.name, str(exc)))
    return failures


def _fill(arg: str, subs: dict[str, str]) -> str:
    for key, value in subs.items():
        arg = arg.replace(key, value)
    return arg


def _check(rc: int, argv: list[str], stderr: str) -> None:
    if rc != 0:
        tail = stderr.strip().splitlines()[-1:] if stderr else []
        raise MagaError(f"exit {rc}{': ' + tail[0] if tail else ''}", " ".join(argv[1:]))


def _write_text_record(path: Path, text: str, argv: list[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    # The step ran the code, not this process: its modules are the whole build's.
    prov = {**provenance(command=" ".join(["python", *argv[1:]])), "modules": _modules_of_build()}
    write_sidecar(path, prov=prov)


def _modules_of_build() -> list[str]:
    """The book build runs every chapter: its record depends on both packages and the notebooks."""
    files = git("ls-files", "maga", "maga_core", "notebooks") or ""
    return [f for f in files.splitlines() if f.endswith((".py", ".ipynb", ".yaml"))]


def copy_record(src: Path, dest: Path) -> Path:
    """Copy a record made elsewhere (a run folder) into results/, with its provenance sidecar if any."""
    if not Path(src).is_file():
        raise MagaError("no such record (run the command that makes it first)", src)
    for a, b in [(src, dest)] + ([(sidecar_path(src), sidecar_path(dest))] if sidecar_path(src).is_file() else []):
        with atomic_path(b) as tmp:
            shutil.copyfile(a, tmp)
    if not sidecar_path(src).is_file():
        sidecar_path(dest).unlink(missing_ok=True)  # an older sidecar would describe another run
    return Path(dest)
