#!/usr/bin/env bash
# GPU call 51a (one H200, carry .whl): the light LoRA dropout with hashed masks in compiled layers (on by
# default from this tree). GPU tests of the dropout, compile, planning and trainer; W2-8B A/Bs marked
# `experiment`: the hashed dropout switched off (QK_BENCH_LIGHT_COMPILED=0, PEFT's dropout in compiled
# layers, as before), and the partitioner allowed to recompute what the backward materialises
# (QK_BENCH_FUNCTORCH). Prepares /tmp/site (no datasets 5 or trl 1.16) for call 51b, which must follow warm.
#   bash benchmarks/gpu/call51a.sh COMMIT RUN_ID
set -u
. benchmarks/gpu/unsloth_sites_env.sh "$1"
timeout 260 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_lora_dropout.py tests/gpu/test_gpu_compile.py \
  tests/gpu/test_gpu_planning.py tests/gpu/test_gpu_trainer.py > $OUT/gpu_tests51.txt 2>&1
tail -6 $OUT/gpu_tests51.txt
L=/tmp/qk-logs; mkdir -p $L; touch $OUT/results.jsonl
QK_BENCH_LIGHT_COMPILED=0 python3 benchmarks/harness.py --run-id $2-x --workloads W2-8B --systems qlora_kit \
  --out $OUT/results.jsonl --log-dir $L/x0 --time-budget 150 > $OUT/call51a.txt 2>&1
QK_BENCH_FUNCTORCH="ban_recompute_materialized_backward=0" python3 benchmarks/harness.py --run-id $2-x --workloads W2-8B \
  --systems qlora_kit --out $OUT/results.jsonl --log-dir $L/x1 --time-budget 150 >> $OUT/call51a.txt 2>&1
grep -E "\[harness\]" $OUT/call51a.txt | cut -c1-300
