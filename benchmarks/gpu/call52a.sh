#!/usr/bin/env bash
# GPU call 52a (one H200, carry .whl): call 51a again after the fix for inductor's int32 index (Triton
# refused the hash's 0x9E3779B1 against a narrowed index): the dropout and compile GPU tests, then the
# W2-8B A/B with the partitioner allowed to recompute what the backward materialises (`experiment`).
# Prepares /tmp/site for call 51b, which must follow warm.
#   bash benchmarks/gpu/call52a.sh COMMIT RUN_ID
set -u
pip() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "$@"; }
pip --target /tmp/site5 .whl/*.whl || exit 1
pip --target /tmp/site $(ls .whl/*.whl | grep -v -e datasets-5 -e trl-1.16) || exit 1
export PYTHONPATH=/tmp/site5:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export CUDA_VISIBLE_DEVICES=0
PYTHONPATH=/tmp/site5:/tmp/site:$PWD/src python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import harness; harness.precompile_sources(); harness.warm_up_device()"
timeout 200 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_lora_dropout.py tests/gpu/test_gpu_compile.py > $OUT/gpu_tests52.txt 2>&1
tail -3 $OUT/gpu_tests52.txt; grep -E "^FAILED|^E  .*Error" $OUT/gpu_tests52.txt | head -5
L=/tmp/qk-logs; mkdir -p $L; touch $OUT/results.jsonl
QK_BENCH_FUNCTORCH="ban_recompute_materialized_backward=0" python3 benchmarks/harness.py --run-id $2-x --workloads W2-8B \
  --systems qlora_kit --out $OUT/results.jsonl --log-dir $L/x1 --time-budget 150 > $OUT/call52a.txt 2>&1
grep -E "\[harness\] W2" $OUT/call52a.txt | cut -c1-300
