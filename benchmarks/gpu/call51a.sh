#!/usr/bin/env bash
# GPU call 51a (one H200, carry .whl): the light LoRA dropout with hashed masks in compiled layers (on by
# default from this tree). GPU tests of the dropout, compile, planning and trainer; W2-8B A/Bs marked
# `experiment`: the hashed dropout switched off (QK_BENCH_LIGHT_COMPILED=0, PEFT's dropout in compiled
# layers, as before), and the partitioner allowed to recompute what the backward materialises
# (QK_BENCH_FUNCTORCH). Prepares /tmp/site (no datasets 5 or trl 1.16) for call 51b, which must follow warm.
#   bash benchmarks/gpu/call51a.sh COMMIT RUN_ID
set -u
pip() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "$@"; }
pip --target /tmp/site5 .whl/*.whl || exit 1
pip --target /tmp/site $(ls .whl/*.whl | grep -v -e datasets-5 -e trl-1.16) || exit 1
export PYTHONPATH=/tmp/site5:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export CUDA_VISIBLE_DEVICES=0
PYTHONPATH=/tmp/site5:/tmp/site:$PWD/src python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import harness; harness.precompile_sources(); harness.warm_up_device()"
timeout 260 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_lora_dropout.py tests/gpu/test_gpu_compile.py \
  tests/gpu/test_gpu_planning.py tests/gpu/test_gpu_trainer.py > $OUT/gpu_tests51.txt 2>&1
tail -6 $OUT/gpu_tests51.txt
L=/tmp/qk-logs; mkdir -p $L; touch $OUT/results.jsonl
QK_BENCH_LIGHT_COMPILED=0 python3 benchmarks/harness.py --run-id $2-x --workloads W2-8B --systems qlora_kit \
  --out $OUT/results.jsonl --log-dir $L/x0 --time-budget 150 > $OUT/call51a.txt 2>&1
QK_BENCH_FUNCTORCH="ban_recompute_materialized_backward=0" python3 benchmarks/harness.py --run-id $2-x --workloads W2-8B \
  --systems qlora_kit --out $OUT/results.jsonl --log-dir $L/x1 --time-budget 150 >> $OUT/call51a.txt 2>&1
grep -E "\[harness\]" $OUT/call51a.txt | cut -c1-300
