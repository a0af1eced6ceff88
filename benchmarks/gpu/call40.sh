#!/usr/bin/env bash
# GPU call 40 (one H200, carry .whl and .benchdata): NOT RUN YET. First: the recorded-layer GPU tests, which
# check the two recording guards committed after call 39 (record only at a step's first pass; gradient-copy
# hooks idle while recording): the padded two-passes-per-step test failed in calls 38 and 39. Then W1's step
# by phase at HEAD with `cuda_graphs: auto` as shipped (what bounds the ~30 ms steady-state step now).
#   bash benchmarks/gpu/call40.sh
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl > /dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD/src HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
timeout 150 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_layer_graphs.py \
  tests/gpu/test_gpu_head_loss.py tests/gpu/test_gpu_compile.py > $OUT/gpu_tests40.txt 2>&1
tail -1 $OUT/gpu_tests40.txt
python3 benchmarks/step_phases.py --skip 60 --kernels 5 --w1 --w1-data .benchdata/alpaca_en_demo.json \
  --w1-tokenizer .benchdata/gpt2-tokenizer -- train.max_steps=160 2>&1 | grep -v Warning \
  | grep -E "^ |per step|time:|cuda_graphs|Error" | head -60
