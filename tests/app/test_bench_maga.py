"""`maga bench maga --mags`: both students at several magnifications, tiny enough to run on a laptop; the
record then feeds chapter 3's curve (table, figure, sentences against both baselines)."""

from __future__ import annotations

import json

from maga import cli
from maga.book import baselines_text, mags_figures


def test_bench_maga_mags_trains_both_students_per_magnification(tmp_path, capsys):
    rc = cli.main(["bench", "maga", "--json", "--mags", "2.5,1.25", "--modes", "native,upsample",
                   "--max-train-tiles", "6", "--epochs", "1", "--max-tiles-per-class", "4", "--n-boot", "20",
                   "--probe-repeats", "1", "--device", "cpu", "--workdir", str(tmp_path)])
    assert rc == 0
    record = json.loads(capsys.readouterr().out)  # strict JSON: undefined fractions are null, not NaN
    assert set(record["mags"]) == {"2.5", "1.25"}
    for mag, px in (("2.5", 32), ("1.25", 16)):
        run = record["mags"][mag]
        assert set(run["train_seconds"]) == {"native", "upsample"}
        assert run["align_config"]["upsample"]["mode"] == "upsample" and run["align_config"]["native"]["mag"] == float(mag)
        task = run["tasks"]["tcga_luad_vs_lusc"]
        assert task["px"][f"{mag}x"] == px
        assert set(task["recovered_fraction"]) == {f"maga_{mag}x_native", f"maga_{mag}x_upsample"}
        for per_baseline in task["recovered_fraction"].values():  # both students against both baselines
            assert set(per_baseline) == {f"teacher_{mag}x", f"teacher_{mag}x_upsampled"}
        lo, hi = task["cosine_to_20x"][f"maga_{mag}x_native"][1:]
        assert -1 <= lo <= hi <= 1
    assert len(list((tmp_path / "maga_students").glob("*.pt"))) == 4  # one student per magnification and mode
    table = mags_figures.curve_table(record)
    assert len(table) == 4 and "upsample: gap recovered vs upsampled" in table  # (task, magnification) rows
    assert len(mags_figures.curve_figure(record).data) == 2 * 2 * 5  # tasks x (AUC, cosine) x kinds
    path = tmp_path / "maga_mags.json"
    path.write_text(json.dumps(record))
    lines = baselines_text.bench_text(path).splitlines()  # both students, both magnifications, both tasks
    assert len(lines) == 8 and all("upsampled teacher" in line and "plain teacher" in line for line in lines)
    assert sum("MAGA upsample" in line for line in lines) == 4
