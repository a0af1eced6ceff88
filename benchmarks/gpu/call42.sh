#!/usr/bin/env bash
# GPU call 42 (one H200, carry .whl and .benchdata): the `sdpa_varlen` GPU tests, then W1 in the harness:
# seed_improved.yaml as shipped (sdpa_varlen adopted on CUDA), the same with plain SDPA (`qlora_kit:sdpa`, the
# lever alone), with fused torch AdamW instead of bnb's 8-bit one (`qlora_kit:adamw`), and the TRL seed recipe,
# one lease.
#   bash benchmarks/gpu/call42.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl > /dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export CUDA_VISIBLE_DEVICES=0
timeout 150 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_varlen_attention.py > $OUT/gpu_tests42.txt 2>&1
tail -1 $OUT/gpu_tests42.txt
python3 benchmarks/harness.py --run-id $2 --workloads W1 --systems qlora_kit,qlora_kit:sdpa,qlora_kit:adamw,trl_seed \
  --variant sdpa=model.attn_implementation=sdpa --variant adamw=train.optimizer.kind=adamw_torch,train.optimizer.weight_decay=0.01 \
  --out $OUT/results.jsonl --log-dir /tmp/qk-logs/w1 --time-budget 420 \
  --w1-data .benchdata/alpaca_en_demo.json --w1-tokenizer .benchdata/gpt2-tokenizer > $OUT/call42.txt 2>&1
grep -E "\] W1" $OUT/call42.txt
mkdir -p $OUT/logs && cp /tmp/qk-logs/w1/*qlora_kit* $OUT/logs/ 2>/dev/null
