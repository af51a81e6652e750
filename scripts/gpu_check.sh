#!/usr/bin/env bash
# The GPU check: everything the service does on CUDA, in one command; its steps' limits add up to 10 minutes.
#
#   scripts/gpu_check.sh [--cpu] [OUT]        (make gpu-check; OUT defaults to var/gpu-check)
#
# Steps, each under its own time limit; a failed step is recorded and the next one still runs, so that whatever
# was measured comes back:
#   1. speed:  python -m benchmarks.speed --device cuda   (ViT-B/16 batch 128, ViT-L/14 batch 32, bf16; crossover)
#   2. e2e:    python -m benchmarks.gpu_e2e --device cuda (one job through saft serve; GPU utilisation)
#   3. tests:  pytest -m gpu tests/gpu                     (engine agreement, finetune vs CPU, resume, out of memory)
# Results in OUT: speed-cuda.{json,md}, profile-*.txt, gpu-e2e.{json,md}, gpu-tests.xml, check.log (every step's
# output, the machine, and a summary line per step).
#
# --cpu rehearses the same steps on the CPU at tiny sizes (CI runs it): speed --quick in one process with the
# profiler, the end-to-end job with saft-tiny, the gpu tests with SAFT_TEST_DEVICE=cpu.
#
# A GPU machine without network: first run scripts/gpu_wheels.sh where the package index is reachable; the
# wheels it leaves in .whl/ are installed here into a folder of their own (nothing is installed system-wide).
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
MODE=cuda
OUT=
for arg in "$@"; do
  case "$arg" in
    --cpu) MODE=cpu ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) OUT=$arg ;;
  esac
done
OUT=${OUT:-var/gpu-check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/check.log"
: >"$LOG"

if [ -x .venv/bin/python ]; then PY=${PY:-.venv/bin/python}; else PY=${PY:-python3}; fi
SITE=
# the wheels, only where the packages are missing (a GPU machine's own python, not the project's .venv)
if ! "$PY" -c "import open_clip, fastapi, celery, sqlalchemy, pydantic_settings" 2>/dev/null \
    && compgen -G ".whl/*.whl" >/dev/null; then
  SITE=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    >>"$LOG" 2>&1 || { echo "installing the wheels of .whl/ failed; see $LOG" >&2; exit 1; }
fi
export PYTHONPATH="$ROOT:$ROOT/clients/python${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

status=0
step() {  # step NAME LIMIT_S COMMAND...: run it, log it, time it, record its exit code
  local name=$1 limit=$2; shift 2
  local start=$SECONDS rc
  echo "=== $name: $*" | tee -a "$LOG"
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  [ "$rc" -eq 0 ] || status=1
  echo "=== $name: exit $rc after $((SECONDS - start)) s (limit $limit s)" | tee -a "$LOG"
}

{
  echo "=== machine"
  date -u +%Y-%m-%dT%H:%M:%SZ
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda',
torch.version.cuda, 'available', torch.cuda.is_available())"
} >>"$LOG" 2>&1

if [ "$MODE" = cuda ]; then
  step speed 270 "$PY" -m benchmarks.speed --device cuda --rounds 2 --steps 8 --out "$OUT"
  step e2e 120 "$PY" -m benchmarks.gpu_e2e --device cuda --out "$OUT"
  step tests 210 "$PY" -m pytest tests/gpu -m gpu -q -p no:cacheprovider --junitxml="$OUT/gpu-tests.xml"
else
  step speed 300 "$PY" -m benchmarks.speed --device cpu --quick --one-process --profile --rounds 1 --steps 1 \
    --out "$OUT"
  step e2e 300 "$PY" -m benchmarks.gpu_e2e --device cpu --out "$OUT"
  step tests 600 env SAFT_TEST_DEVICE=cpu "$PY" -m pytest tests/gpu -m gpu -q -p no:cacheprovider \
    --junitxml="$OUT/gpu-tests.xml"
fi
[ -n "$SITE" ] && rm -rf "$SITE"
echo "=== gpu check ($MODE): $([ $status -eq 0 ] && echo passed || echo FAILED); results in $OUT" | tee -a "$LOG"
exit $status
