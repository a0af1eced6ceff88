#!/usr/bin/env bash
# GPU call 52a (one H200, carry .whl): call 51a again after the fix for inductor's int32 index (Triton
# refused the hash's 0x9E3779B1 against a narrowed index): the dropout and compile GPU tests, then the
# W2-8B A/B with the partitioner allowed to recompute what the backward materialises (`experiment`).
# Prepares /tmp/site for call 51b, which must follow warm.
#   bash benchmarks/gpu/call52a.sh COMMIT RUN_ID
set -u
. benchmarks/gpu/unsloth_sites_env.sh "$1"
timeout 200 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_lora_dropout.py tests/gpu/test_gpu_compile.py > $OUT/gpu_tests52.txt 2>&1
tail -3 $OUT/gpu_tests52.txt; grep -E "^FAILED|^E  .*Error" $OUT/gpu_tests52.txt | head -5
L=/tmp/qk-logs; mkdir -p $L; touch $OUT/results.jsonl
QK_BENCH_FUNCTORCH="ban_recompute_materialized_backward=0" python3 benchmarks/harness.py --run-id $2-x --workloads W2-8B \
  --systems qlora_kit --out $OUT/results.jsonl --log-dir $L/x1 --time-budget 150 > $OUT/call52a.txt 2>&1
grep -E "\[harness\] W2" $OUT/call52a.txt | cut -c1-300
