#!/usr/bin/env bash
# One short check of the accelerator path (under 5 minutes on one GPU; slower, with smaller defaults, on CPU):
# extraction at 20x and 5x, 2 epochs of `maga align`, and one cross-validation fold of `maga mil`, all on
# the chosen device. Prints one JSON object (tiles/s at 20x and 5x, their ratio, seconds per stage).
#
#   tools/device_check.sh                    # CUDA if present, else CPU
#   DEVICE=cuda:1 PRECISION=fp16 tools/device_check.sh
#   SIZE=2048 SLIDES=4 TILES=32 tools/device_check.sh   # smaller (what the CPU defaults are)
#   BAG_BATCH=2 tools/device_check.sh        # the CV fold with 2 bags per forward pass
#
# Env: PYTHON (default: python), DEVICE (auto), PRECISION (auto), SIZE (slide side in px), SLIDES (small
# slides for the CV fold), TILES (tiles for align), BAG_BATCH (maga mil --bag-batch, default 1), KEEP=1
# keeps the work folder (printed in the JSON).
set -euo pipefail
PY=${PYTHON:-python}
DEVICE=${DEVICE:-auto}
PRECISION=${PRECISION:-auto}
KIND=$("$PY" -c "from maga_core.device import resolve; print(resolve('$DEVICE', '$PRECISION').kind)")
if [ "$KIND" = cuda ]; then DEF_SIZE=12288 DEF_SLIDES=8 DEF_TILES=512; else DEF_SIZE=3072 DEF_SLIDES=6 DEF_TILES=32; fi
SIZE=${SIZE:-$DEF_SIZE}; SLIDES=${SLIDES:-$DEF_SLIDES}; TILES=${TILES:-$DEF_TILES}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/maga-device-check.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
maga() { "$PY" -m maga.cli "$@"; }
now() { "$PY" -c 'import time; print(time.time())'; }
log() { echo "device_check: $*" >&2; }

log "slides ($SIZE px + $SLIDES small) in $WORK"
maga generate-slide "$WORK/big.tif" --width "$SIZE" --height "$SIZE" --seed 0 >/dev/null
for i in $(seq 0 $((SLIDES - 1))); do
  maga generate-slide "$WORK/small/s$i.tif" --width 1536 --height 1536 --seed $((i + 1)) --tumour-fraction 0.6 >/dev/null
done
for mag in 20 5; do
  log "extract ${mag}x"
  maga extract --encoder efficientnet_lite0 --mag $mag --input "$WORK/big.tif" --out "$WORK/f$mag.h5" \
    --device "$DEVICE" --precision "$PRECISION" --no-progress >&2
  mv "$WORK/extract_report.json" "$WORK/report_$mag.json"
done
log "align, 2 epochs on $TILES tiles"
t0=$(now)
maga align --teacher efficientnet_lite0 --tiles lc25000_lung_224_dedup:train --mpp 0.5 --max-tiles "$TILES" --epochs 2 \
  --out "$WORK/student.pt" --device "$DEVICE" --precision "$PRECISION" >/dev/null
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
"$PY" - "$WORK" "$t0" "$t1" "$t2" "$t3" "$DEVICE" "$PRECISION" "${KEEP:-0}" <<'PYEOF'
import json, sys
from pathlib import Path
import h5py
work, t0, t1, t2, t3, device, precision, keep = sys.argv[1], *map(float, sys.argv[2:6]), *sys.argv[6:]
work = Path(work)
out = {}
for mag in (20, 5):
    done = json.loads((work / f"report_{mag}.json").read_text())["done"][0]
    out[f"tiles_per_s_{mag}x"] = done["n_patches"] / done["seconds"]
    out[f"slide_seconds_{mag}x"] = done["seconds"]
    out["patches"] = done["n_patches"]
with h5py.File(work / "f20.h5") as h5:
    out["device"], out["precision"] = str(h5.attrs["device"]), str(h5.attrs["precision"])
out["ratio_20x_over_5x"] = out["slide_seconds_20x"] / out["slide_seconds_5x"]
out["align_2_epochs_seconds"] = t1 - t0
out["cv_fold_seconds"] = t3 - t2
out["cv_fold_auc"] = json.loads((work / "cv" / "summary.json").read_text())["pooled"]["auc"]["value"]
cfg = json.loads((work / "cv" / "config.json").read_text())["train"]
out["cv_device"], out["cv_precision"], out["cv_bag_batch"] = cfg["device"], cfg["precision"], cfg["bag_batch"]
if keep == "1":
    out["work"] = str(work)
print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}, indent=2))
PYEOF
