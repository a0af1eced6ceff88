#!/usr/bin/env bash
# GPU call 25 (one H200, carry .whl): NOT RUN YET (no device time left on 2026-11-30). The light LoRA dropout
# inside compiled layers (`LightDropoutLinear.in_compiled`, switched on by QK_BENCH_LIGHT_COMPILED=1 in the W2
# worker) measured alone: its GPU tests, then W2-8B defaults and the 16 GiB budget with and without it, one run.
# Predicted: defaults 31.8 -> ~23.5 GiB (dropout 0's 23.3 plus seeds), tokens/s -0 to -10% (448 custom-op
# calls per pass, masks drawn by bernoulli_ outside inductor's fusion); under the 16 GiB budget fewer
# checkpointed layers, so faster.
#   bash benchmarks/gpu/call25.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
RUN=$2; L=/tmp/qk-logs; mkdir -p $L; touch $OUT/results.jsonl
timeout 150 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_lora_dropout.py > $OUT/gpu_tests25.txt 2>&1
H="python3 benchmarks/harness.py --run-id $RUN --out $OUT/results.jsonl --workloads W2-8B"
$H --systems qlora_kit,qlora_kit:lean16 --variant lean16=train.memory_budget_gib=16 --log-dir $L/a > $OUT/call25.txt 2>&1
QK_BENCH_LIGHT_COMPILED=1 $H --systems qlora_kit:lightc,qlora_kit:lean16lightc --variant lightc=train.seed=0 \
  --variant lean16lightc=train.memory_budget_gib=16 --log-dir $L/b >> $OUT/call25.txt 2>&1
grep -h "memory:" $L/*/*.log >> $OUT/call25.txt
grep -E "passed|failed|Error" $OUT/gpu_tests25.txt | tail -4; grep -E "\] W2" $OUT/call25.txt | grep -v ratio
