#!/usr/bin/env bash
# GPU call 17 (one H200, carry .whl): partial activation offload. The offload/planning/kernel GPU tests, then
# W3 at 262,144 tokens, one step, qlora_kit (dropout 0) with auto settings (the plan: every layer
# checkpointed, the first 9 of 32 offloaded), host memory sampled.
#   bash benchmarks/gpu/call17.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
RUN=$2; L=/tmp/qk-logs; mkdir -p $L; touch $OUT/results.jsonl
timeout 120 python3 -m pytest -q -p no:cacheprovider -rs -s tests/gpu/test_gpu_offload.py tests/gpu/test_gpu_planning.py \
  tests/gpu/test_gpu_kernels.py > $OUT/gpu_tests17.txt 2>&1
(while true; do echo "$(date +%T) $(free -g | sed -n 2p)" >> $OUT/free.txt; sleep 15; done) &
python3 benchmarks/harness.py --run-id $RUN --workloads W3 --systems qlora_kit_dropout0 \
  --w3-start 262144 --w3-cap 262144 --w3-steps 1 --w3-budget 330 --out $OUT/results.jsonl --log-dir $L/w3 > $OUT/call17.txt 2>&1
grep -h "memory" $L/*/*.log | head -4 >> $OUT/call17.txt
tar czf $OUT/logs17.tgz -C $L . 2>/dev/null
grep -E "passed|failed|memory:|predicted" $OUT/gpu_tests17.txt | tail -8; tail -6 $OUT/call17.txt; sort -k4 -n $OUT/free.txt | tail -1
