#!/usr/bin/env bash
# GPU call 39 (one H200, carry .whl; after 26a and 26b on the same warm machine): the recorded-layer GPU
# tests, then the quickstart twice (the first run converts the GGUF file) at this tree: layers recorded at
# each shape's second pass, packed passes filled to quarters of the budget.
#   bash benchmarks/gpu/call39.sh COMMIT
set -u
. benchmarks/gpu/quickstart_env.sh "$1" > /dev/null 2>&1
export CUDA_VISIBLE_DEVICES=0
timeout 100 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_layer_graphs.py > $OUT/gpu_tests39.txt 2>&1
tail -1 $OUT/gpu_tests39.txt
for run in 1 2; do
  rm -rf /tmp/qs-$run
  python3 -m qlora_kit.cli quickstart --output-dir /tmp/qs-$run > $OUT/quickstart_$run.txt 2>&1
  grep -h "exact-match\|quickstart:\|time:\|cuda_graphs" $OUT/quickstart_$run.txt
done
