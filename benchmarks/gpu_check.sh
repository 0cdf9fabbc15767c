#!/usr/bin/env bash
# The GPU check in one call (benchmarks/gpu_check.py says what it measures), on the GPU machine:
#   bash benchmarks/gpu_check.sh "$OUT" --evaluator_checkpoint .gpu-carry/checkpoint.pth \
#       --conditions .gpu-carry/test.json .gpu-carry/new_test.json
#   PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh OUT --smoke      # tiny, on any machine
# First installs the wheels carried in .whl/ (benchmarks/gpu_prepare.sh downloads them: what the GPU image lacks)
# into /tmp/gpu-check-site, ahead of the image's packages; --smoke skips that, the wheels are for the GPU machine's
# Python 3.12. The whole output goes to OUT/gpu_check.log too; the budget counts from this script's start.
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR [--smoke] [gpu_check.py flags]}
shift
cd "$(dirname "$0")/.."
mkdir -p "$out"
export GPU_CHECK_START=$(date +%s.%N) GPU_CHECK_COMMAND="bash benchmarks/gpu_check.sh $out $*"
python=${PYTHON:-python3}

check() {
  if [[ " $* " != *" --smoke "* ]] && compgen -G ".whl/*.whl" >/dev/null; then
    echo "installing $(ls .whl/*.whl | wc -l) carried wheels from .whl/ into /tmp/gpu-check-site"
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/gpu-check-site .whl/*.whl || { echo "error: installing the wheels in .whl/ failed"; return 1; }
    export PYTHONPATH="/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}"
    export GPU_CHECK_WHEELS="$(cd .whl && ls *.whl | tr '\n' ' ')"
  fi
  export GPU_CHECK_INSTALLED_AT=$(date +%s.%N)
  PYTHONUNBUFFERED=1 "$python" benchmarks/gpu_check.py --output_dir "$out" "$@"
}

check "$@" 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
