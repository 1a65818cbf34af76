#!/usr/bin/env bash
# What the lent GPU machine runs, from the repository root, after scripts/bench/gpu_prepare
# ran here:   bash scripts/bench/gpu_device.sh      (carry: [".whl", ".gpu-carry"])
#
# 1. installs the carried wheels into /tmp/site, first on PYTHONPATH, so they shadow the
#    machine's own grpcio/protobuf (it has no network);
# 2. prints versions, where grpc and protobuf come from, and nvidia-smi;
# 3. runs the GPU engine tests (digits on CUDA against the CPU) on the carried models;
# 4. runs the GPU benchmark, scripts/bench/gpu.py, inside its own time box.
# Everything goes to $OUT (else bench-results/gpu/): device.log, pytest-gpu.log, gpu.log,
# gpu_results.json, gpu.md, gpu.png and the workers' logs under logs/.
#
# Time: the whole script must end before the device command's limit (run it with
# timeout_s 480). gpu.py gets BUDGET_S (330 s: about 300 s of plan, see gpu.py's point_plan)
# or less, so that it ends, results written, by DEADLINE_S (450 s) after this script
# started, however long the wheels and the GPU tests took: its budget ends at most
# DEADLINE_S - 25 s in; `timeout` sends TERM 10 s after that (gpu.py writes what it has and
# stops its workers) and KILL 10 s later; gpu.py checkpoints its results after every point.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/bench-results/gpu}
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
DEADLINE_S=${DEADLINE_S:-450}
BUDGET_S=${BUDGET_S:-330}
mkdir -p "$OUT"

install_wheels() {
  rm -rf "$SITE" && mkdir -p "$SITE"
  if "$PY" -m pip --version >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  else
    echo "no pip here: unpacking the wheels into $SITE"
    "$PY" - "$SITE" .whl/*.whl <<'EOF'
import sys
import zipfile

for wheel in sys.argv[2:]:
    zipfile.ZipFile(wheel).extractall(sys.argv[1])
EOF
  fi
  # A regular package here, extending its path to the machine's other google/ directories:
  # whatever google/ the machine has (even an old-style package with an __init__.py), the
  # carried protobuf under /tmp/site is the one found first.
  printf '__path__ = __import__("pkgutil").extend_path(__path__, __name__)\n' > "$SITE/google/__init__.py"
}

show_versions() {
  # Versions first (no imports), then each import on its own, so one failure hides nothing.
  "$PY" - "$SITE" <<'EOF'
import importlib
import importlib.metadata as md
import sys

names = ("grpcio", "grpcio-reflection", "grpcio-health-checking", "protobuf", "pydantic", "pydantic_core",
         "typing_extensions", "ml_dtypes", "numpy", "torch", "transformers", "tokenizers", "safetensors",
         "onnxruntime", "matplotlib", "psutil", "uvloop", "pytest")
for name in names:
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} MISSING")
print(f"python {sys.version.split()[0]} at {sys.executable}")
for module in ("grpc", "google.protobuf", "pydantic", "torch", "services.bench.runner", "services.worker.app"):
    try:
        where = importlib.import_module(module).__file__
    except Exception as exc:
        print(f"import {module} FAILED: {type(exc).__name__}: {exc}")
        continue
    carried = module in ("grpc", "google.protobuf", "pydantic")
    print(f"{module} from {where}" + ("  <-- NOT the carried one" if carried and not where.startswith(sys.argv[1]) else ""))
try:
    import torch

    print(f"torch CUDA {torch.version.cuda}; available {torch.cuda.is_available()}; devices {torch.cuda.device_count()}")
except Exception as exc:
    print(f"torch CUDA check FAILED: {exc}")
EOF
  nvidia-smi || true
}

{
  echo "== install wheels into $SITE"
  start=$SECONDS
  install_wheels || echo "WHEEL INSTALL FAILED"
  echo "   took $((SECONDS - start)) s"
} 2>&1 | tee "$OUT/device.log"
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
{
  echo "== versions"
  show_versions
} 2>&1 | tee -a "$OUT/device.log"

echo "== GPU engine tests" | tee -a "$OUT/device.log"
SHUNTER_EXAMPLES=$PWD/.gpu-carry PYTHONPATH="$PYTHONPATH:$PWD/scripts/bench" \
  timeout -s INT -k 10 90 "$PY" -m pytest -q -p no:cacheprovider -p gpu_pytest_plugin -m gpu -rs \
  tests/unit/worker/test_engines.py 2>&1 | tee "$OUT/pytest-gpu.log"
echo "pytest exit code ${PIPESTATUS[0]}" | tee -a "$OUT/device.log"

budget=$((DEADLINE_S - SECONDS - 25))
[ "$budget" -le "$BUDGET_S" ] || budget=$BUDGET_S
[ "$budget" -ge 30 ] || budget=30
echo "== GPU benchmark: budget $budget s at $SECONDS s in (deadline $DEADLINE_S s)" | tee -a "$OUT/device.log"
timeout -s TERM -k 10 $((budget + 10)) "$PY" scripts/bench/gpu.py --device cuda --out "$OUT" --budget-s "$budget" \
  2>&1 | tee "$OUT/gpu.log"
code=${PIPESTATUS[0]}
echo "   done at $SECONDS s" | tee -a "$OUT/device.log"
echo "gpu.py exit code $code" | tee -a "$OUT/device.log"
ls -la "$OUT" | tee -a "$OUT/device.log"
exit "$code"
