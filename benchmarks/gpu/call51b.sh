#!/usr/bin/env bash
# GPU call 51b (carry .whl-unsloth; right after call 51a, the machine still warm): W2-8B and W2-1B in one run
# for qlora_kit's defaults (hashed LoRA dropout in compiled layers), under 16 and 14 GiB memory budgets,
# Unsloth and the HF loop.
#   bash benchmarks/gpu/call51b.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl-unsloth/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export CUDA_VISIBLE_DEVICES=0
python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import harness; harness.precompile_sources()"
RUN=$2; L=/tmp/qk-logs; mkdir -p $L; touch $OUT/results.jsonl
python3 benchmarks/harness.py --run-id $RUN --workloads W2-8B --systems qlora_kit,unsloth,hf_loop,qlora_kit:lean16,qlora_kit:lean14 \
  --variant lean16=train.memory_budget_gib=16 --variant lean14=train.memory_budget_gib=14 \
  --out $OUT/results.jsonl --log-dir $L/w2 --time-budget 330 > $OUT/call51b.txt 2>&1
python3 benchmarks/harness.py --run-id $RUN --workloads W2-1B --systems qlora_kit,unsloth \
  --out $OUT/results.jsonl --log-dir $L/w2 --time-budget 180 >> $OUT/call51b.txt 2>&1
grep -E "\[harness\]" $OUT/call51b.txt | cut -c1-300
mkdir -p $OUT/logs && cp $L/w2/*W2-8B*qlora_kit*.log $OUT/logs/ 2>/dev/null; ls $OUT/logs | head
