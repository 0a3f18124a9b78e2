#!/usr/bin/env bash
# GPU self-check (make gpu-check): on a machine with an NVIDIA GPU, in well under 10 minutes,
#   1. the CUDA tests (pytest -k cuda: CUDA against CPU training, probes and Langevin noise, device records),
#   2. the training benchmark on the GPU (bench/train_throughput.py --device cuda, ensembles up to 1024),
#   3. the tiny study end to end with train.device and probes.device set to cuda, in a copy of the tree,
# then writes a Markdown summary (default bench/results/gpu_check.md). Needs the CUDA venv:
# make venv LOCK=envs/cuda.txt. Stops with one line when torch cannot use CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${1:-bench/results/gpu_check.md}
PY=.venv/bin/python
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$(dirname "$OUT")"

device=$($PY -c '
import sys
from bachglass import device
from bachglass.errors import ParamsError
try:
    print(device.describe(device.resolve("cuda", "train.device")))
except ParamsError as err:
    sys.exit(str(err))
')

seconds() { echo $(( $(date +%s) - $1 )); }
rows=()

start=$(date +%s)
if .venv/bin/pytest -q -p no:cacheprovider -k cuda tests >"$WORK/pytest.txt" 2>&1; then result=passed; else result=FAILED; fi
counts=$(grep -E '^[0-9]+ (passed|failed|skipped|error)|no tests ran' "$WORK/pytest.txt" | tail -1 || true)
rows+=("| CUDA tests (\`pytest -k cuda\`) | $result: $counts | $(seconds "$start") |")

start=$(date +%s)
if $PY bench/train_throughput.py --device cuda --sizes 1,16,256,1024 --shapes 1x16,2x32,3x64 --rounds 2 \
  --out "$WORK/bench.json" >"$WORK/bench.txt" 2>&1; then result=passed; else result=FAILED; fi
rows+=("| benchmark (\`train_throughput.py --device cuda\`) | $result | $(seconds "$start") |")

start=$(date +%s)
mkdir "$WORK/tree"
git ls-files -co --exclude-standard | tar -cf - -T - | tar -xf - -C "$WORK/tree"
printf 'train: {device: cuda}\nprobes: {device: cuda}\n' >"$WORK/cuda.yaml"
if (cd "$WORK/tree" && "$ROOT/.venv/bin/snakemake" --cores all --configfile tests/tiny.yaml "$WORK/cuda.yaml" \
  >"$WORK/study.txt" 2>&1); then
  recorded=$($PY -c 'import sys, xarray as xr; ds = xr.open_dataset(sys.argv[1]); print(ds.attrs["device"], "/", ds.attrs["device_name"])' \
    "$WORK/tree/results/runs/d2_w8_s0/trajectory.nc" 2>&1 || true)
  result="passed; trajectories record $recorded"
else
  result="FAILED (last lines below)"
fi
rows+=("| tiny study, \`train.device: cuda\`, \`probes.device: cuda\` | $result | $(seconds "$start") |")

{
  echo "# GPU self-check"
  echo
  echo "$device"
  echo
  echo "| part | result | seconds |"
  echo "|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "## Benchmark (model-steps/s; ratios to the plain per-model loop)"
  echo
  echo '```'
  cat "$WORK/bench.txt"
  echo '```'
  if grep -q FAILED <<<"${rows[*]}"; then
    echo
    echo "## Failures"
    for log in pytest study; do echo; echo "### $log"; echo '```'; tail -40 "$WORK/$log.txt"; echo '```'; done
  fi
} >"$OUT"
cat "$OUT"
! grep -q FAILED <<<"${rows[*]}"
