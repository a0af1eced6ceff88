#!/usr/bin/env bash
# GPU call 38 (one H200, carry .whl and .benchdata): the GPU tests of recorded layers and head losses, then
# W1 in the harness: seed_improved.yaml as shipped (recorded layers, `cuda_graphs: auto`), the same without
# them (`qlora_kit:eager`), and the TRL seed recipe, one lease.
#   bash benchmarks/gpu/call38.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl > /dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export CUDA_VISIBLE_DEVICES=0
timeout 120 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_layer_graphs.py \
  tests/gpu/test_gpu_head_loss.py > $OUT/gpu_tests38.txt 2>&1
tail -1 $OUT/gpu_tests38.txt
python3 benchmarks/harness.py --run-id $2 --workloads W1 --systems qlora_kit,qlora_kit:eager,trl_seed \
  --variant eager=train.cuda_graphs=false \
  --out $OUT/results.jsonl --log-dir /tmp/qk-logs/w1 --time-budget 420 \
  --w1-data .benchdata/alpaca_en_demo.json --w1-tokenizer .benchdata/gpt2-tokenizer > $OUT/call38.txt 2>&1
grep -E "\] W1" $OUT/call38.txt
mkdir -p $OUT/logs && cp /tmp/qk-logs/w1/*qlora_kit* $OUT/logs/ 2>/dev/null
