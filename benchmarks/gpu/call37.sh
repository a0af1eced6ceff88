#!/usr/bin/env bash
# GPU call 37 (one H200, carry .whl and .benchdata): the GPU tests of the head losses and recorded layers,
# then W1's step by phase after the aligned plain head, budgeted evaluation and one-shape recording:
# the defaults and train.cuda_graphs (120 steps, the first 40 not timed, 5 profiled).
#   bash benchmarks/gpu/call37.sh
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
timeout 200 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_head_loss.py \
  tests/gpu/test_gpu_layer_graphs.py > $OUT/gpu_tests37.txt 2>&1
tail -3 $OUT/gpu_tests37.txt
for variant in "" "train.cuda_graphs=true"; do
  python3 benchmarks/step_phases.py --skip 40 --kernels 5 --w1 --w1-data .benchdata/alpaca_en_demo.json \
    --w1-tokenizer .benchdata/gpt2-tokenizer -- train.max_steps=120 $variant 2>&1 | grep -v Warning \
    | grep -E "^ |per step|time:|memory:|cuda_graphs|loss" | head -40
done
