#!/usr/bin/env bash
# GPU call 34 (one H200, carry .whl; after 26a and 26b on the same warm machine): the quickstart at its
# defaults, the held-out rows evaluated in one pass (eval_batch_size 64), twice (the first run converts
# the GGUF file).
#   bash benchmarks/gpu/call34.sh COMMIT
set -u
. benchmarks/gpu/quickstart_env.sh "$1" > /dev/null 2>&1
export CUDA_VISIBLE_DEVICES=0
for run in 1 2; do
  rm -rf /tmp/qs-$run
  python3 -m qlora_kit.cli quickstart --output-dir /tmp/qs-$run > $OUT/quickstart_$run.txt 2>&1
  grep -h "exact-match\|quickstart:\|time:\|train: step 120\|train: 120" $OUT/quickstart_$run.txt
done
