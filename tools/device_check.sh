#!/usr/bin/env bash
# One short check of the accelerator path (under 2 minutes on one H200; slower, with smaller defaults, on
# CPU). Prints ONE JSON object: our pipeline vs the network alone (tiles/s, steady state over several
# generated slides in one process, the first slide apart) at 20x and 5x, the CLAM-style loop on the same
# device (`maga bench extract --baseline`), seconds per epoch of `maga align`, and one cross-validation
# fold of `maga mil` on features of small slides made with that student.
#
#   tools/device_check.sh                    # CUDA if present, else CPU
#   DEVICE=cuda:1 PRECISION=fp16 tools/device_check.sh
#   SIZE=2048 BENCH_SLIDES=2 SLIDES=4 TILES=32 tools/device_check.sh   # smaller
#   WEIGHTS=random tools/device_check.sh     # no pretrained weights on the machine (speed does not depend on them)
#
# Env: PYTHON (default: python), DEVICE (auto), PRECISION (auto), SIZE (benchmark slide side in px),
# BENCH_SLIDES (benchmark slides, the first a warm-up), SLIDES (small slides for the CV fold), TILES (tiles
# for align), BAG_BATCH (maga mil --bag-batch, default 1), WEIGHTS (encoder weights, e.g. random),
# BENCH_OUT (also write the extract benchmark's JSON there), KEEP=1 keeps the work folder.
set -euo pipefail
PY=${PYTHON:-python}
DEVICE=${DEVICE:-auto}
PRECISION=${PRECISION:-auto}
KIND=$("$PY" -c "from maga_core.device import resolve; print(resolve('$DEVICE', '$PRECISION').kind)")
if [ "$KIND" = cuda ]; then DEF_SIZE=12288 DEF_BSL=3 DEF_SLIDES=8 DEF_TILES=512; else DEF_SIZE=3072 DEF_BSL=2 DEF_SLIDES=6 DEF_TILES=32; fi
SIZE=${SIZE:-$DEF_SIZE}; BENCH_SLIDES=${BENCH_SLIDES:-$DEF_BSL}; SLIDES=${SLIDES:-$DEF_SLIDES}; TILES=${TILES:-$DEF_TILES}
DEV=$("$PY" -c "from maga_core.device import resolve; print(resolve('$DEVICE', '$PRECISION').device)")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/maga-device-check.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
maga() { "$PY" -m maga.cli "$@"; }
now() { "$PY" -c 'import time; print(time.time())'; }
log() { echo "device_check: $*" >&2; }
EXW=(); ALW=()
if [ -n "${WEIGHTS:-}" ]; then EXW=(--weights "$WEIGHTS"); ALW=(--teacher-weights "$WEIGHTS"); fi

log "bench extract on $DEV: $BENCH_SLIDES slides of $SIZE px, pipeline vs network alone, CLAM-style loop"
t=$(now)
maga bench extract --json --device "$DEV" --size "$SIZE" --slides "$BENCH_SLIDES" --encoders efficientnet_lite0 \
  --baseline --out "$WORK/bench_extract.json" >/dev/null
tb=$(now)
[ -z "${BENCH_OUT:-}" ] || cp "$WORK/bench_extract.json" "$BENCH_OUT"
log "small slides for the CV fold"
for i in $(seq 0 $((SLIDES - 1))); do
  maga generate-slide "$WORK/small/s$i.tif" --width 1536 --height 1536 --seed $((i + 1)) --tumour-fraction 0.6 >/dev/null
done
log "align, 2 epochs on $TILES tiles"
t0=$(now)
maga align --teacher efficientnet_lite0 "${ALW[@]}" --tiles lc25000_lung_224_dedup:train --mpp 0.5 --max-tiles "$TILES" \
  --epochs 2 --out "$WORK/student.pt" --device "$DEVICE" --precision "$PRECISION" >/dev/null
t1=$(now)
log "features of the small slides with the student, then one CV fold"
maga extract --encoder efficientnet_lite0 --student "$WORK/student.pt" --input "$WORK/small" --out "$WORK/feat" \
  --device "$DEVICE" --precision "$PRECISION" --no-progress >&2
"$PY" - "$WORK" "$SLIDES" <<'PYEOF'
import json, sys
from pathlib import Path
work, n = Path(sys.argv[1]), int(sys.argv[2])
labels = [json.loads((work / "small" / f"s{i}.tif.json").read_text())["stats"]["tumour_class"] for i in range(n)]
rows = ["slide,label"] + [f"s{i},{lab}" for i, lab in enumerate(labels)]
(work / "labels.csv").write_text("\n".join(rows) + "\n")
test, val = [0, 1], [2, 3]
parts = ["fold,slide,part"] + [f"0,s{i},{'test' if i in test else 'val' if i in val else 'train'}" for i in range(n)]
(work / "splits.csv").write_text("\n".join(parts) + "\n")
PYEOF
t2=$(now)
maga mil --model gltrans --features "$WORK/feat" --labels "$WORK/labels.csv" --splits "$WORK/splits.csv" \
  --epochs 5 --bootstrap 50 --bag-batch "${BAG_BATCH:-1}" --out "$WORK/cv" --device "$DEVICE" \
  --precision "$PRECISION" --quiet >/dev/null
t3=$(now)
"$PY" - "$WORK" "$t" "$tb" "$t0" "$t1" "$t2" "$t3" "${KEEP:-0}" <<'PYEOF'
import json, sys
from pathlib import Path
work, t, tb, t0, t1, t2, t3, keep = Path(sys.argv[1]), *map(float, sys.argv[2:8]), sys.argv[8]
bench = json.loads((work / "bench_extract.json").read_text())
row, base = bench["encoders"]["efficientnet_lite0"], bench["baseline"]
out = {"device": row["device"], "precision": row["precision"], "slides": bench["slide"]["slides"],
       "slide_px": bench["settings"]["size"], "patches_per_slide": row["patches_per_slide"]}
for mag in ("20x", "5x"):
    out[f"pipeline_tiles_per_s_{mag}"] = row[f"pipeline_tiles_per_s_{mag}"]
    out[f"network_only_tiles_per_s_{mag}"] = row[f"model_only_tiles_per_s_{mag}"]
    out[f"pipeline_efficiency_{mag}"] = row[f"pipeline_tiles_per_s_{mag}"] / row[f"model_only_tiles_per_s_{mag}"]
    out[f"slide_seconds_{mag}"] = row[f"slide_seconds_{mag}"]
    out[f"first_slide_seconds_{mag}"] = row[f"first_slide_seconds_{mag}"]
out["ratio_20x_over_5x"] = row["ratio_20x_over_5x"]
out["clam_style_tiles_per_s"] = base["tiles_per_s"]
out["clam_style_first_slide_seconds"] = base["first_slide_seconds"]
out["lite0_20x_over_clam_style"] = row["pipeline_tiles_per_s_20x"] / base["tiles_per_s"]
out["bench_extract_seconds"] = tb - t
out["align_seconds_per_epoch"] = (t1 - t0) / 2
out["cv_fold_seconds"] = t3 - t2
out["cv_fold_auc"] = json.loads((work / "cv" / "summary.json").read_text())["pooled"]["auc"]["value"]
cfg = json.loads((work / "cv" / "config.json").read_text())["train"]
out["cv_device"], out["cv_precision"], out["cv_bag_batch"] = cfg["device"], cfg["precision"], cfg["bag_batch"]
if keep == "1":
    out["work"] = str(work)
print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}, indent=2))
PYEOF
