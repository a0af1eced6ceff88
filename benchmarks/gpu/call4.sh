#!/usr/bin/env bash
# GPU call 4 (a new lease; carry .whl and .benchdata): the GPU tests again after their fixes, W3 for
# qlora_kit at 262,144 tokens (one probe: activation offload + chunked loss, LoRA dropout 0), and W1's
# exact reference config.   bash benchmarks/gpu/call4.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
RUN=$2; L=/tmp/qk-logs; mkdir -p $L
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/gpu > $OUT/gpu_tests4.txt 2>&1
python3 benchmarks/harness.py --run-id $RUN --workloads W3 --systems qlora_kit_dropout0 --w3-start 262144 --w3-cap 262144 \
  --w3-steps 1 --w3-budget 340 --out $OUT/results.jsonl --log-dir $L/w3 --time-budget 350 > $OUT/call4.txt 2>&1
python3 benchmarks/harness.py --run-id $RUN --workloads W1-seed-exact --systems qlora_kit --out $OUT/results.jsonl \
  --log-dir $L/w1 --time-budget 100 --w1-data .benchdata/alpaca_en_demo.json --w1-tokenizer .benchdata/gpt2-tokenizer >> $OUT/call4.txt 2>&1
tar czf $OUT/logs4.tgz -C $L . 2>/dev/null
tail -4 $OUT/gpu_tests4.txt; tail -6 $OUT/call4.txt
