#!/usr/bin/env bash
# GPU call 56b (carry .whl-unsloth; right after call 56a, the machine still warm): W2-8B in one run for
# qlora_kit's defaults, Unsloth, the HF loop, and memory budgets planned by the corrected planner: 19.5 GiB
# (planned peak 15.7 GiB, 8 layers checkpointed: the HF loop's memory), 14 GiB and 10 GiB (every layer).
#   bash benchmarks/gpu/call56b.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl-unsloth/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export CUDA_VISIBLE_DEVICES=0
python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import harness; harness.precompile_sources()"
L=/tmp/qk-logs; mkdir -p $L; touch $OUT/results.jsonl
python3 benchmarks/harness.py --run-id $2 --workloads W2-8B \
  --systems qlora_kit,unsloth,hf_loop,qlora_kit:mem19,qlora_kit:lean14,qlora_kit:lean10 \
  --variant mem19=train.memory_budget_gib=19.5 --variant lean14=train.memory_budget_gib=14 \
  --variant lean10=train.memory_budget_gib=10 \
  --out $OUT/results.jsonl --log-dir $L/w2 --time-budget 420 > $OUT/call56b.txt 2>&1
grep -E "\[harness\]" $OUT/call56b.txt | cut -c1-300
mkdir -p $OUT/logs && cp $L/w2/*W2-8B*qlora_kit*.log $OUT/logs/ 2>/dev/null; ls $OUT/logs | head
