#!/usr/bin/env bash
# Prepares, here (with network), what the GPU check needs besides the repo, in two ignored folders that the device
# call carries:
#   .whl/        wheels of what the GPU image (Python 3.12, torch and accelerate, no registry) lacks: diffusers,
#                datasets and huggingface_hub >= 2.4 with their missing dependencies, at the versions this
#                environment runs (the ones the tests pass with). W&B is left out: its wheels (20 MB and more) would
#                not fit beside the evaluator, and the check logs to TensorBoard, which the image has.
#   .gpu-carry/  the evaluator checkpoint given as the argument, and the real test.json / new_test.json from
#                ../shared/iclevr when they are there (else the check scores the render's own files).
#   PYTHON=.venv/bin/python bash benchmarks/gpu_prepare.sh path/to/evaluator/checkpoint.pth
# Then prints the size of what a call sends (the device tool's limit: 64 MiB in all).
set -euo pipefail
evaluator=${1:?usage: bash benchmarks/gpu_prepare.sh EVALUATOR_CHECKPOINT (train one with scripts/train_evaluator.py)}
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[[ -f $evaluator ]] || { echo "error: $evaluator does not exist; train one with scripts/train_evaluator.py" >&2; exit 1; }

# What the GPU image lacks or holds at other versions; the pins are this environment's versions.
packages=(diffusers datasets huggingface_hub httpx2 httpcore2 truststore hf-xet click dill multiprocess fsspec
          importlib_metadata lazy-importer)
pins=()
for name in "${packages[@]}"; do
  version=$("$python" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name") ||
    { echo "error: $name is not installed in $python; run this with the project's environment (PYTHON=...)" >&2; exit 1; }
  pins+=("$name==$version")
done
rm -rf .whl && mkdir .whl
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}"

rm -rf .gpu-carry && mkdir .gpu-carry
cp "$evaluator" .gpu-carry/checkpoint.pth
for name in test.json new_test.json; do
  [[ -f ../shared/iclevr/$name ]] && cp "../shared/iclevr/$name" .gpu-carry/
done

bytes() { du -cb "$@" | awk '$2 == "total" {s += $1} END {print s}'; }
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null |
  awk '$2 == "total" {s += $1} END {print s}')
wheels=$(bytes .whl) carry=$(bytes .gpu-carry)
total=$((tree + wheels + carry))
awk -v t="$tree" -v w="$wheels" -v c="$carry" -v n="$(ls .whl | wc -l)" 'BEGIN {
  printf "a call sends: repo %.1f MiB + .whl %.1f MiB (%d wheels) + .gpu-carry %.1f MiB = %.1f MiB of the 64 MiB\n",
    t / 2^20, w / 2^20, n, c / 2^20, (t + w + c) / 2^20 }'
if (( total > 64 * 1024 * 1024 )); then
  echo "error: over the device tool's 64 MiB: move untracked files out of the working tree first" >&2
  exit 1
fi
