#!/usr/bin/env bash
# GPU call 20 (one H200, carry .whl): bitsandbytes optimizers without their per-parameter device sync. The
# optimizer GPU tests, then W2-8B defaults, the 16 GiB budget and the HF loop in one run, then the budget's
# step profiled again (syncs per step: 451 in call 19). The one-sync step was removed after run r: 14dbf3f only.
#   bash benchmarks/gpu/call20.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
RUN=$2; L=/tmp/qk-logs; mkdir -p $L; touch $OUT/results.jsonl
timeout 120 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_optim.py tests/gpu/test_gpu_trainer.py > $OUT/gpu_tests20.txt 2>&1
python3 benchmarks/harness.py --run-id $RUN --workloads W2-8B --systems qlora_kit,qlora_kit:lean16,hf_loop \
  --variant lean16=train.memory_budget_gib=16 --out $OUT/results.jsonl --log-dir $L/w2 --time-budget 260 > $OUT/call20.txt 2>&1
python3 benchmarks/harness.py --run-id $RUN-prof --workloads W2-8B --systems qlora_kit:lean16 --variant lean16=train.memory_budget_gib=16 \
  --ours-overrides "train.callbacks=[{kind: profile, start: 3, steps: 2, path: $OUT/prof-lean16}]" \
  --out $OUT/profiled.jsonl --log-dir $L/prof >> $OUT/call20.txt 2>&1
grep -E "passed|failed|Error" $OUT/gpu_tests20.txt | tail -6; grep "\] W2" $OUT/call20.txt; head -12 $OUT/prof-lean16/summary.json
