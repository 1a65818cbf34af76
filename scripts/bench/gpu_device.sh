#!/usr/bin/env bash
# What the lent GPU machine runs, after scripts/bench/gpu_prepare ran here:
#   bash scripts/bench/gpu_device.sh        (carry: [".whl", ".gpu-carry"]; run it with timeout_s 480)
# The machine has no network: the carried wheels go first on PYTHONPATH (they shadow its own
# grpcio/protobuf); then the GPU engine tests; then the runner's gpu profile, time-boxed to end
# by DEADLINE_S. Everything goes to $OUT (else bench-results/gpu/).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/bench-results/gpu}
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
DEADLINE_S=${DEADLINE_S:-450}
mkdir -p "$OUT" && rm -rf "$SITE" && mkdir -p "$SITE"
# pip if there is one, else the wheels are zip files.
"$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl 2>&1 | tee "$OUT/device.log" ||
  "$PY" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' "$SITE" .whl/*.whl
# Whatever google/ the machine has, the carried protobuf is found first.
printf '__path__ = __import__("pkgutil").extend_path(__path__, __name__)\n' > "$SITE/google/__init__.py"
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -c 'import grpc, google.protobuf, torch; print("grpc", grpc.__file__, "torch", torch.__version__,
  "CUDA", torch.cuda.is_available())' 2>&1 | tee -a "$OUT/device.log"
nvidia-smi 2>&1 | tee -a "$OUT/device.log"
SHUNTER_EXAMPLES=$PWD/.gpu-carry PYTHONPATH="$PYTHONPATH:$PWD/scripts/bench" timeout -s INT -k 10 90 \
  "$PY" -m pytest -q -p no:cacheprovider -p gpu_pytest_plugin -m gpu -rs tests/unit/worker/test_engines.py \
  2>&1 | tee "$OUT/pytest-gpu.log"
budget=$((DEADLINE_S - SECONDS - 25))
echo "== gpu profile: budget $budget s at $SECONDS s in" | tee -a "$OUT/device.log"
timeout -s TERM -k 10 $((budget + 10)) "$PY" scripts/bench/run.py --profile gpu --device cuda --out "$OUT" \
  --budget-s "$budget" 2>&1 | tee "$OUT/gpu.log"
code=${PIPESTATUS[0]}
ls -la "$OUT" | tee -a "$OUT/device.log"
exit "$code"
