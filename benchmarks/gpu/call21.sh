#!/usr/bin/env bash
# GPU call 21 (one H200, carry .whl): the one-sync optimizer step measured alone. W2-8B (paged AdamW 8-bit)
# defaults and the 16 GiB budget, each with the library's step and with bitsandbytes' own
# (QK_BENCH_STOCK_BNB_STEP=1, system names :stockstep), in one run; first the optimizer GPU test again.
# The one-sync step did not pay and was removed after this run, with its switch: the script runs on 30b796b only.
#   bash benchmarks/gpu/call21.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
RUN=$2; L=/tmp/qk-logs; mkdir -p $L; touch $OUT/results.jsonl
timeout 60 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_optim.py > $OUT/gpu_tests21.txt 2>&1
H="python3 benchmarks/harness.py --run-id $RUN --out $OUT/results.jsonl"
$H --workloads W2-8B --systems qlora_kit --log-dir $L/a > $OUT/call21.txt 2>&1
QK_BENCH_STOCK_BNB_STEP=1 $H --workloads W2-8B --systems qlora_kit:stockstep --variant stockstep=train.seed=0 --log-dir $L/b >> $OUT/call21.txt 2>&1
$H --workloads W2-8B --systems qlora_kit:lean16 --variant lean16=train.memory_budget_gib=16 --log-dir $L/c >> $OUT/call21.txt 2>&1
QK_BENCH_STOCK_BNB_STEP=1 $H --workloads W2-8B --systems qlora_kit:lean16stockstep --variant lean16stockstep=train.memory_budget_gib=16 \
  --log-dir $L/d >> $OUT/call21.txt 2>&1
grep -E "passed|failed|Error" $OUT/gpu_tests21.txt | tail -4; grep -E "\] W2" $OUT/call21.txt | grep ok
