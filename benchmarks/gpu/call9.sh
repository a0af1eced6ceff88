#!/usr/bin/env bash
# GPU call 9 (one H200 of nvidia-h200-x2, carry .whl and .benchdata): W1 and W1-seed-exact for qlora_kit and the
# TRL seed recipe, then W1 with the adapters' optimizer swapped for fused torch AdamW (variant `adamw`).
#   bash benchmarks/gpu/call9.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
RUN=$2; L=/tmp/qk-logs; mkdir -p $L; touch $OUT/results.jsonl
export CUDA_VISIBLE_DEVICES=0  # one GPU: TRL's Trainer refuses nn.DataParallel when it sees two
W1DATA="--w1-data .benchdata/alpaca_en_demo.json --w1-tokenizer .benchdata/gpt2-tokenizer"
python3 benchmarks/harness.py --run-id $RUN --workloads W1,W1-seed-exact --systems qlora_kit,trl_seed --out $OUT/results.jsonl \
  --log-dir $L/w1 --time-budget 470 $W1DATA > $OUT/call9.txt 2>&1
python3 benchmarks/harness.py --run-id $RUN --workloads W1 --systems qlora_kit:adamw --out $OUT/results.jsonl \
  --variant adamw=train.optimizer.kind=adamw_torch,train.optimizer.lr=2.0e-4,train.optimizer.weight_decay=0.01 \
  --log-dir $L/w1v --time-budget 110 $W1DATA >> $OUT/call9.txt 2>&1
tar czf $OUT/logs9.tgz -C $L . 2>/dev/null
tail -16 $OUT/call9.txt
