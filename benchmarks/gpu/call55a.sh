#!/usr/bin/env bash
# GPU call 55a (one H200, carry .whl; not run yet): the hashed dropout as a selectively checkpointed region,
# after run 2026-12-02c's graph break was fixed. The dropout GPU tests, then W2-8B and W2-1B A/Bs marked
# `experiment`: the defaults (PEFT's dropout in compiled layers) against QK_BENCH_LIGHT_COMPILED=1, and the
# same under a 14 GiB budget. If the hashed form pays, turn `LightDropoutLinear.in_compiled` on and run call
# 51b (Unsloth in the same run) for the table. Prepares /tmp/site for an Unsloth call, which must follow warm.
#   bash benchmarks/gpu/call55a.sh COMMIT RUN_ID
set -u
. benchmarks/gpu/unsloth_sites_env.sh "$1"
timeout 200 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_lora_dropout.py > $OUT/gpu_tests55.txt 2>&1
tail -3 $OUT/gpu_tests55.txt; grep -E "^FAILED|^E  .*Error" $OUT/gpu_tests55.txt | head -5
L=/tmp/qk-logs; mkdir -p $L; touch $OUT/results.jsonl
ab() {  # ab VALUE: W2-8B (defaults and a 14 GiB budget) and W2-1B with QK_BENCH_LIGHT_COMPILED=VALUE
  QK_BENCH_LIGHT_COMPILED=$1 python3 benchmarks/harness.py --run-id $2-x --workloads W2-8B,W2-1B \
    --systems qlora_kit,qlora_kit:lean14 --variant lean14=train.memory_budget_gib=14 \
    --out $OUT/results.jsonl --log-dir $L/ab$1 --time-budget 200 >> $OUT/call55a.txt 2>&1
}
ab 0 "$2"; ab 1 "$2"
grep -E "\[harness\] W2.*(ok|error)" $OUT/call55a.txt | cut -c1-260
