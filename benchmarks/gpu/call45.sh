#!/usr/bin/env bash
# GPU call 45 (one H200, carry .whl and .benchdata): W1 in the harness at the commit that reads each step's loss
# and norm one step late (no host-device sync per step with fused AdamW) and copies windows to the GPU through
# pinned memory, with the TRL seed recipe in the same lease; then the GPU tests of the loop's changes.
#   bash benchmarks/gpu/call45.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl > /dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export CUDA_VISIBLE_DEVICES=0
python3 benchmarks/harness.py --run-id $2 --workloads W1 --systems qlora_kit,trl_seed \
  --out $OUT/results.jsonl --log-dir /tmp/qk-logs/w1 --time-budget 230 \
  --w1-data .benchdata/alpaca_en_demo.json --w1-tokenizer .benchdata/gpt2-tokenizer > $OUT/call45.txt 2>&1
grep -E "\] W1" $OUT/call45.txt
mkdir -p $OUT/logs && cp /tmp/qk-logs/w1/*qlora_kit.log $OUT/logs/ 2>/dev/null
timeout 100 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_step_stats.py \
  tests/gpu/test_gpu_trainer.py > $OUT/gpu_tests45.txt 2>&1
tail -4 $OUT/gpu_tests45.txt
