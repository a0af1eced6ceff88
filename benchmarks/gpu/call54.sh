#!/usr/bin/env bash
# GPU call 54 (one H200, carry .whl): why the hashed dropout was slow in run 2026-12-02c (W2-8B 6,736 against
# 12,040 tokens/s with PEFT's dropout): one compiled lora_A step per dropout form (benchmarks/dropout_kernels.py),
# and dynamo's graph breaks in the compiled tiny-Llama GPU test.
#   bash benchmarks/gpu/call54.sh COMMIT
set -u
. benchmarks/gpu/gpu_env.sh "$1"
python3 benchmarks/dropout_kernels.py --tokens 4096 --width 14336 2>&1 | grep -E "ms per|Error" | tee $OUT/kernels54.txt
python3 benchmarks/dropout_kernels.py --tokens 4096 --width 4096 2>&1 | grep -E "ms per|Error" | tee -a $OUT/kernels54.txt
TORCH_LOGS="graph_breaks" timeout 150 python3 -m pytest -q -p no:cacheprovider -s tests/gpu/test_gpu_lora_dropout.py \
  -k checkpointed_recompute > $OUT/breaks54.txt 2>&1
grep -cE "Graph break|unable to trace" $OUT/breaks54.txt; grep -E "Graph Break Reason|unable to trace|Explanation" $OUT/breaks54.txt | sort | uniq -c | head -8
tail -2 $OUT/breaks54.txt
