#!/usr/bin/env bash
# GPU call 27 (one H200, carry .whl): NOT RUN YET. CUDA graphs for the compiled decoder layers
# (torch.compile mode "reduce-overhead", switched by QK_BENCH_COMPILE_MODE in the W2 worker) measured alone:
# W2-8B defaults and the 16 GiB budget, W2-1B defaults, each with and without, in one run. Predicted: the
# budgeted 8B step (device busy 68% of it, run 2026-11-30p) gains most, up to its device time (~9,800
# tokens/s against ~9,000); the defaults (85% busy) a few percent; checkpointing's recompute inside backward
# may defeat the graphs (then the rows say error).
#   bash benchmarks/gpu/call27.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
RUN=$2; L=/tmp/qk-logs; mkdir -p $L; touch $OUT/results.jsonl
H="python3 benchmarks/harness.py --run-id $RUN --out $OUT/results.jsonl"
$H --workloads W2-8B --systems qlora_kit,qlora_kit:lean16 --variant lean16=train.memory_budget_gib=16 --log-dir $L/a > $OUT/call27.txt 2>&1
QK_BENCH_COMPILE_MODE=reduce-overhead $H --workloads W2-8B --systems qlora_kit:graphs,qlora_kit:lean16graphs \
  --variant graphs=train.seed=0 --variant lean16graphs=train.memory_budget_gib=16 --log-dir $L/b >> $OUT/call27.txt 2>&1
$H --workloads W2-1B --systems qlora_kit --log-dir $L/c >> $OUT/call27.txt 2>&1
QK_BENCH_COMPILE_MODE=reduce-overhead $H --workloads W2-1B --systems qlora_kit:graphs --variant graphs=train.seed=0 \
  --log-dir $L/d >> $OUT/call27.txt 2>&1
grep -E "\] W2" $OUT/call27.txt | grep -v ratio
