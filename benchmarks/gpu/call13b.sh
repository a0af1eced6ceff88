#!/usr/bin/env bash
# GPU call 13b (carry .whl-unsloth; right after call 13a, the machine still warm): W2-8B and W2-1B for
# qlora_kit with its defaults (train.compile auto: on for these shapes), the same with train.compile=false
# (the lever alone), the HF loop and Unsloth, in one run.
#   bash benchmarks/gpu/call13b.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl-unsloth/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
RUN=$2; L=/tmp/qk-logs; mkdir -p $L; touch $OUT/results.jsonl
python3 benchmarks/harness.py --run-id $RUN --workloads W2-8B --systems qlora_kit,unsloth,hf_loop,qlora_kit:eager \
  --variant eager=train.compile=false --out $OUT/results.jsonl --log-dir $L/w2 --time-budget 300 > $OUT/call13.txt 2>&1
python3 benchmarks/harness.py --run-id $RUN --workloads W2-1B --systems qlora_kit,unsloth,hf_loop,qlora_kit:eager \
  --variant eager=train.compile=false --out $OUT/results.jsonl --log-dir $L/w2 --time-budget 230 >> $OUT/call13.txt 2>&1
tar czf $OUT/logs13.tgz -C $L . 2>/dev/null
tail -12 $OUT/call13.txt
