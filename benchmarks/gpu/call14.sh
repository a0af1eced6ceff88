#!/usr/bin/env bash
# GPU call 14 (one H200, carry .whl): W2-8B with train.memory_budget_gib=16 (auto now checkpoints only the
# fewest decoder layers that fit) beside the defaults and the HF loop, one run.
#   bash benchmarks/gpu/call14.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
RUN=$2; L=/tmp/qk-logs; mkdir -p $L; touch $OUT/results.jsonl
python3 benchmarks/harness.py --run-id $RUN --workloads W2-8B --systems qlora_kit:lean16,hf_loop,qlora_kit \
  --variant lean16=train.memory_budget_gib=16 --out $OUT/results.jsonl --log-dir $L/w2 --time-budget 230 > $OUT/call14.txt 2>&1
grep -h "memory:" $L/w2/*.log | head -3 >> $OUT/call14.txt
tail -9 $OUT/call14.txt
