#!/usr/bin/env bash
# GPU call 23 (one H200, carry .whl): does the compiler recompute LoRA dropout masks instead of saving them?
# W2-8B defaults (dropout 0.05, compiled layers) with torch._functorch.config.functionalize_rng_ops
# (QK_BENCH_RNG_RECOMPUTE=1), alone and with an activation memory budget of 0.5 (call 22: dropout 0.05
# 31.8 GiB, dropout 0 23.3 GiB, budget 0.5 18.2 GiB).
#   bash benchmarks/gpu/call23.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
RUN=$2; L=/tmp/qk-logs; mkdir -p $L; touch $OUT/results.jsonl
H="python3 benchmarks/harness.py --run-id $RUN --out $OUT/results.jsonl --workloads W2-8B"
QK_BENCH_RNG_RECOMPUTE=1 $H --systems qlora_kit:rngrecompute --variant rngrecompute=train.seed=0 --log-dir $L/a > $OUT/call23.txt 2>&1
QK_BENCH_RNG_RECOMPUTE=1 QK_BENCH_ACT_BUDGET=0.5 $H --systems qlora_kit:rngbudget50 --variant rngbudget50=train.seed=0 --log-dir $L/b >> $OUT/call23.txt 2>&1
grep -E "\] W2" $OUT/call23.txt | grep -v ratio; grep -h -iE "error|warn.*rng" $L/*/*.log | sort | uniq -c | sort -rn | head -5
