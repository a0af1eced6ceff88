#!/usr/bin/env bash
# GPU call 2 (carry .whl-unsloth, the machine still warm): Unsloth's W2, then W3 for qlora_kit (LoRA
# dropout 0, as Unsloth's) from 131,072 tokens up.   bash benchmarks/gpu/call2.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl-unsloth/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
RUN=$2; L=/tmp/qk-logs; mkdir -p $L; cp benchmarks/gpu/results_in.jsonl $OUT/results.jsonl 2>/dev/null
python3 benchmarks/harness.py --run-id $RUN --workloads W2-8B,W2-1B --systems unsloth --out $OUT/results.jsonl \
  --log-dir $L/u --time-budget 190 > $OUT/call2.txt 2>&1
python3 benchmarks/harness.py --run-id $RUN --workloads W3 --systems qlora_kit_dropout0 --w3-start 131072 --w3-steps 1 \
  --w3-budget 370 --out $OUT/results.jsonl --log-dir $L/w3 --time-budget 380 >> $OUT/call2.txt 2>&1
tar czf $OUT/logs2.tgz -C $L . 2>/dev/null
tail -14 $OUT/call2.txt
