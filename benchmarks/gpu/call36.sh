#!/usr/bin/env bash
# GPU call 36 (one H200, carry .whl and .benchdata): where W1's 38 ms of "forward + loss" go (call 35):
# the step's phases with the model-without-head and the attention mask timed apart, and torch.profiler's
# operator tables over 5 steps, at the defaults and with recorded layers.
#   bash benchmarks/gpu/call36.sh
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
for variant in "" "train.cuda_graphs=true data.pad_to_multiple_of=256"; do
  python3 benchmarks/step_phases.py --skip 30 --kernels 5 --w1 --w1-data .benchdata/alpaca_en_demo.json \
    --w1-tokenizer .benchdata/gpt2-tokenizer -- train.max_steps=60 $variant 2>&1 | grep -v Warning | tail -62
done
