#!/usr/bin/env bash
# GPU call 33a (one H200, carry .whl; after 26a and 26b on the same warm machine): the GPU tests of recorded
# layers (train.cuda_graphs), light dropout and compiled layers; the quickstart at its new CUDA defaults
# (recorded layers, passes rounded to 64 tokens, no evaluation before training), twice (the first run
# converts the GGUF file).
#   bash benchmarks/gpu/call33a.sh COMMIT
set -u
. benchmarks/gpu/quickstart_env.sh "$1" > /dev/null 2>&1
export CUDA_VISIBLE_DEVICES=0
timeout 200 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_layer_graphs.py \
  tests/gpu/test_gpu_lora_dropout.py tests/gpu/test_gpu_compile.py > $OUT/gpu_tests33.txt 2>&1
tail -3 $OUT/gpu_tests33.txt
for run in 1 2; do
  rm -rf /tmp/qs-$run
  python3 -m qlora_kit.cli quickstart --output-dir /tmp/qs-$run > $OUT/quickstart_$run.txt 2>&1
  grep -h "exact-match\|quickstart:\|time:" $OUT/quickstart_$run.txt
done
