#!/usr/bin/env bash
# GPU call 22 (one H200, carry .whl): an experiment for selective recomputation. W2-8B defaults (compiled layers,
# no checkpointing) with torch's min-cut partitioner under an activation memory budget
# (torch._functorch.config.activation_memory_budget via QK_BENCH_ACT_BUDGET in the W2 worker): peak and tokens/s
# at 0.5 (dropout 0.05 and 0) and 0.2 (dropout 0), beside dropout 0 without a budget.
#   bash benchmarks/gpu/call22.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
RUN=$2; L=/tmp/qk-logs; mkdir -p $L; touch $OUT/results.jsonl
H="python3 benchmarks/harness.py --run-id $RUN --out $OUT/results.jsonl --workloads W2-8B"
$H --systems qlora_kit_dropout0 --log-dir $L/a > $OUT/call22.txt 2>&1
QK_BENCH_ACT_BUDGET=0.5 $H --systems qlora_kit:actbudget50 --variant actbudget50=train.seed=0 --log-dir $L/b >> $OUT/call22.txt 2>&1
QK_BENCH_ACT_BUDGET=0.5 $H --systems qlora_kit:actbudget50d0 --variant actbudget50d0=adapter.dropout=0 --log-dir $L/c >> $OUT/call22.txt 2>&1
QK_BENCH_ACT_BUDGET=0.2 $H --systems qlora_kit:actbudget20d0 --variant actbudget20d0=adapter.dropout=0 --log-dir $L/d >> $OUT/call22.txt 2>&1
grep -E "\] W2" $OUT/call22.txt | grep -v ratio
