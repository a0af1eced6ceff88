#!/usr/bin/env bash
# GPU call 18 (one H200, carry .whl): the light LoRA dropout's GPU tests (first run on CUDA) with the planning
# and offload tests; then W2-8B: does splitting a step into two 2,048-token passes cost less than
# checkpointing more layers? Defaults, 2,048-token passes, a 16 GiB budget with 4,096- and 2,048-token passes.
#   bash benchmarks/gpu/call18.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
RUN=$2; L=/tmp/qk-logs; mkdir -p $L; touch $OUT/results.jsonl
timeout 170 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_lora_dropout.py tests/gpu/test_gpu_planning.py \
  tests/gpu/test_gpu_offload.py > $OUT/gpu_tests18.txt 2>&1
python3 benchmarks/harness.py --run-id $RUN --workloads W2-8B \
  --systems qlora_kit,qlora_kit:p2048,qlora_kit:lean16,qlora_kit:lean16p2048,qlora_kit:lean15p2048 \
  --variant p2048=train.micro_batch_tokens=2048 --variant lean16=train.memory_budget_gib=16 \
  --variant lean16p2048=train.memory_budget_gib=16,train.micro_batch_tokens=2048 \
  --variant lean15p2048=train.memory_budget_gib=15,train.micro_batch_tokens=2048 \
  --out $OUT/results.jsonl --log-dir $L/w2 --time-budget 380 > $OUT/call18.txt 2>&1
grep -h "memory:" $L/w2/*.log >> $OUT/call18.txt
tar czf $OUT/logs18.tgz -C $L . 2>/dev/null
grep -E "passed|failed|Error" $OUT/gpu_tests18.txt | tail -8; tail -14 $OUT/call18.txt
