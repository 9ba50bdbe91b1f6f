"""Provenance on records (maga.provenance) and the staleness `maga results` reports (maga.results_index)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from maga.cli import main
from maga.provenance import provenance, read_provenance, sidecar_path, write_record, write_sidecar
from maga.results_index import MAKERS, records, staleness, status


def test_json_record_carries_provenance_that_parses_back(tmp_path, monkeypatch):
    import maga.provenance

    monkeypatch.setattr(maga.provenance, "_cli_argv", None)  # not called through maga.cli.main here
    monkeypatch.setattr(sys, "argv", ["/venv/bin/maga", "bench", "extract", "--json"])
    path = write_record({"tiles_per_s": 3.0}, tmp_path / "bench.json", config={"device": "cpu", "size": 8192})
    data = json.loads(path.read_text())
    assert data["tiles_per_s"] == 3.0
    prov = read_provenance(path)
    assert prov == data["provenance"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent).stdout.strip()
    assert prov["commit"] == head and isinstance(prov["dirty"], bool)
    assert prov["command"] == "maga bench extract --json"
    assert prov["config"] == {"device": "cpu", "size": 8192}
    assert prov["machine"]["device"] == "cpu" and prov["machine"]["cpu_count"] >= 1
    assert {"load_avg_1m", "python", "torch"} <= set(prov["machine"])
    # repo-relative paths of the modules loaded in this process, this module's writer among them
    assert "maga/provenance.py" in prov["modules"] and "maga/cli.py" in prov["modules"]
    assert all(not m.startswith("/") and m.endswith(".py") for m in prov["modules"])


def test_a_chapter_record_names_its_notebook(tmp_path, monkeypatch):
    from maga.provenance import COMMAND_ENV, SOURCES_ENV

    monkeypatch.setenv(COMMAND_ENV, "python -m maga.book.build --preset smoke --only 08")
    monkeypatch.setenv(SOURCES_ENV, "notebooks/08_telepathology.ipynb:maga/presets.yaml")
    prov = read_provenance(write_record({}, tmp_path / "r.json"))
    assert prov["command"] == "python -m maga.book.build --preset smoke --only 08"
    assert {"notebooks/08_telepathology.ipynb", "maga/presets.yaml", "maga/provenance.py"} <= set(prov["modules"])


def test_csv_record_gets_a_sidecar(tmp_path):
    csv = tmp_path / "table.csv"
    csv.write_text("a,b\n1,2\n")
    assert read_provenance(csv) is None
    write_sidecar(csv, config={"preset": "demo"}, command="maga results summary")
    assert sidecar_path(csv).name == "table.csv.provenance.json"
    assert read_provenance(csv)["command"] == "maga results summary"
    assert [p.name for p in records(tmp_path)] == ["table.csv"]  # the sidecar is not a record


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "model.py").write_text("SCALE = 1\n")
    (tmp_path / "pkg" / "other.py").write_text("X = 1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "first")
    return tmp_path


def test_record_is_stale_when_its_module_changes_after_its_commit(repo):
    prov = {**provenance(repo=repo), "modules": ["pkg/model.py"]}
    assert prov["commit"] == _git(repo, "rev-parse", "HEAD") and prov["dirty"] is False
    assert staleness(prov, repo) == ("current", [])
    (repo / "pkg" / "other.py").write_text("X = 2\n")  # a module the record did not load
    _git(repo, "commit", "-qam", "other")
    assert staleness(prov, repo) == ("current", [])
    (repo / "pkg" / "model.py").write_text("SCALE = 2\n")
    assert staleness(prov, repo) == ("current", [])  # uncommitted: HEAD has not moved
    _git(repo, "commit", "-qam", "change the model")
    assert staleness(prov, repo) == ("stale (code changed)", ["pkg/model.py"])


def test_dirty_means_uncommitted_code_not_rewritten_records(repo):
    (repo / "results").mkdir()
    (repo / "results" / "a.json").write_text("{}\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "a record")
    (repo / "results" / "a.json").write_text('{"x": 1}\n')  # an earlier maker of the same run rewrote it
    assert provenance(repo=repo)["dirty"] is False
    (repo / "pkg" / "model.py").write_text("SCALE = 3\n")
    assert provenance(repo=repo)["dirty"] is True


def test_moved_module_and_missing_provenance_are_stale(repo):
    prov = {**provenance(repo=repo), "modules": ["pkg/model.py"]}
    _git(repo, "mv", "pkg/model.py", "pkg/models.py")
    _git(repo, "commit", "-qm", "move")
    assert staleness(prov, repo) == ("stale (modules moved)", ["pkg/model.py"])
    assert staleness(None, repo)[0] == "stale (no provenance)"
    assert staleness({**prov, "commit": "0" * 40}, repo)[0].startswith("stale (commit 0000000000 not in")


def test_status_reads_each_record_of_a_results_folder(repo):
    results = repo / "results"
    results.mkdir()
    (results / "README.md").write_text("not a record\n")
    (results / "old.json").write_text("{}\n")
    fresh = write_record({"x": 1}, results / "fresh.json")
    data = json.loads(fresh.read_text())
    data["provenance"].update(commit=_git(repo, "rev-parse", "HEAD"), modules=["pkg/model.py"], dirty=False)
    fresh.write_text(json.dumps(data))
    rows = {r.file: r for r in status(results, repo)}
    assert set(rows) == {"old.json", "fresh.json"}
    assert rows["old.json"].stale and not rows["fresh.json"].stale


def test_maga_results_json_lists_every_record(capsys):
    assert main(["results", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    listed = {r["file"] for r in rows}
    assert listed == {p.name for p in records()}
    made = {f for m in MAKERS for f in m.files}
    assert listed <= made, f"records no maker regenerates: {sorted(listed - made)}"
    assert all(r["stale"] == (r["state"] != "current") for r in rows)


def test_in_process_cli_call_names_its_own_arguments(tmp_path, capsys):
    out = tmp_path / "table.json"
    assert main(["results", "combine", str(out), f"a={tmp_path / 'missing.json'}"]) == 2  # one-line error
    assert "maga results: error:" in capsys.readouterr().err and not out.exists()
    part = write_record({"x": 1}, tmp_path / "a.json")
    assert main(["results", "combine", str(out), f"a={part}"]) == 0
    data = json.loads(out.read_text())
    assert data["runs"]["a"]["x"] == 1
    assert data["provenance"]["command"] == f"maga results combine {out} a={part}"


def test_a_benchmark_record_lists_only_the_registration_modules_its_command_reaches(monkeypatch):
    """Building the parser imports every subcommand and benchmark; a `maga bench datapath` record depends on
    datapath and what it imports (extract's memory sampler, the CLAM-style loop), not on the other benchmarks."""
    import maga.provenance as prov
    from maga.cli import build_parser

    monkeypatch.setattr(prov, "_running", [])
    args = build_parser().parse_args(["bench", "datapath", "--json"])
    everything = prov.loaded_modules()  # no command known: every loaded module counts
    assert "maga/bench/telepath.py" in everything and "maga/commands/serve.py" in everything
    prov.use_running(args.func)
    mods = prov.loaded_modules()
    assert {"maga/commands/bench.py", "maga/bench/registry.py", "maga/bench/datapath.py", "maga/bench/extract.py",
            "maga/bench/clam_loop.py"} <= set(mods)
    assert not {"maga/bench/telepath.py", "maga/bench/reliability.py", "maga/commands/serve.py"} & set(mods)
    assert "maga/provenance.py" in mods  # modules outside the registration layer all count


def test_a_record_made_from_child_processes_lists_the_code_they_run(monkeypatch):
    """`maga bench reliability` runs extract, align, mil and cohort in child processes: its record depends on
    their code (a change to maga/extract.py must mark it stale), though this process never calls it. (The
    thin `maga/commands/` wrappers the children parse their arguments with are not listed: the application
    layer does not import the CLI.)"""
    import maga.provenance as prov
    from maga.cli import build_parser
    from maga.reliability.kills import CHILD_CODE, maga_argv

    monkeypatch.setattr(prov, "_running", [])
    prov.use_running(build_parser().parse_args(["bench", "reliability", "--json"]).func)
    for command in CHILD_CODE:
        maga_argv(command)
    mods = set(prov.loaded_modules())
    assert {"maga/extract_job.py", "maga/extract.py", "maga_core/align/train.py", "maga_core/mil/cv.py",
            "maga/cohort_pipeline.py"} <= mods
    assert not {"maga/bench/telepath.py", "maga/commands/serve.py"} & mods
