#!/usr/bin/env bash
# GPU call 12 (one H200, carry .whl and .benchdata): run as 2026-11-30h at 7cce413. W1 with `train.compile` beside the defaults and
# the TRL seed recipe; W2-1B with `train.compile` beside the defaults and the HF loop. One run id.
#   bash benchmarks/gpu/call12.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export CUDA_VISIBLE_DEVICES=0  # TRL refuses nn.DataParallel when it sees two GPUs
RUN=$2; L=/tmp/qk-logs; mkdir -p $L; touch $OUT/results.jsonl
python3 benchmarks/harness.py --run-id $RUN --workloads W1 --systems qlora_kit,qlora_kit:compile,trl_seed \
  --variant compile=train.compile=true --out $OUT/results.jsonl --log-dir $L/w1 --time-budget 330 \
  --w1-data .benchdata/alpaca_en_demo.json --w1-tokenizer .benchdata/gpt2-tokenizer > $OUT/call12.txt 2>&1
python3 benchmarks/harness.py --run-id $RUN --workloads W2-1B --systems qlora_kit,qlora_kit:compile,hf_loop \
  --variant compile=train.compile=true --out $OUT/results.jsonl --log-dir $L/w2 --time-budget 200 >> $OUT/call12.txt 2>&1
tar czf $OUT/logs12.tgz -C $L . 2>/dev/null
tail -12 $OUT/call12.txt
