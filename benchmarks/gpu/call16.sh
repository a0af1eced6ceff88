#!/usr/bin/env bash
# GPU call 16 (one H200, carry .whl): W3 at the 393,216-token target, one step, qlora_kit (dropout 0) with its
# auto settings (every layer checkpointed, inputs offloaded: ~96 GiB of pinned host memory), host memory sampled.
#   bash benchmarks/gpu/call16.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
RUN=$2; L=/tmp/qk-logs; mkdir -p $L; touch $OUT/results.jsonl
(while true; do echo "$(date +%T) $(free -g | sed -n 2p)" >> $OUT/free.txt; sleep 15; done) &
python3 benchmarks/harness.py --run-id $RUN --workloads W3 --systems qlora_kit_dropout0 \
  --w3-start 393216 --w3-cap 393216 --w3-steps 1 --w3-budget 575 --out $OUT/results.jsonl --log-dir $L/w3 > $OUT/call16.txt 2>&1
grep -h "memory:" $L/*/*.log | head -3 >> $OUT/call16.txt
tar czf $OUT/logs16.tgz -C $L . 2>/dev/null
tail -6 $OUT/call16.txt; sort -k4 -n $OUT/free.txt | tail -2
