#!/usr/bin/env bash
# GPU call 33b (one H200, carry .whl and .benchdata): W1 with recorded layers (train.cuda_graphs, passes
# rounded to 256 tokens) and fused torch AdamW for the adapters, beside the defaults and the TRL seed
# recipe, one lease.
#   bash benchmarks/gpu/call33b.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl > /dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export CUDA_VISIBLE_DEVICES=0
python3 benchmarks/harness.py --run-id $2 --workloads W1 --systems qlora_kit,qlora_kit:graphs_fused,trl_seed \
  --variant graphs_fused=train.cuda_graphs=true,data.pad_to_multiple_of=256,train.optimizer.kind=adamw_torch,train.optimizer.weight_decay=0.01 \
  --out $OUT/results.jsonl --log-dir /tmp/qk-logs/w1 --time-budget 500 \
  --w1-data .benchdata/alpaca_en_demo.json --w1-tokenizer .benchdata/gpt2-tokenizer > $OUT/call33b.txt 2>&1
grep -E "\] W1" $OUT/call33b.txt
mkdir -p $OUT/logs && cp /tmp/qk-logs/w1/*qlora_kit* $OUT/logs/ 2>/dev/null
