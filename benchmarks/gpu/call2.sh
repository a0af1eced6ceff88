#!/usr/bin/env bash
# GPU call 2 (carry .whl-unsloth; the machine still warm from call 1): GPU 0 runs Unsloth's W2 and its W3
# (capped); GPU 1 runs W3 for qlora_kit then for the HF loop.
#   bash benchmarks/gpu/call2.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl-unsloth/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
RUN=$2; L=/tmp/qk-logs; mkdir -p $L
( CUDA_VISIBLE_DEVICES=0 python3 benchmarks/harness.py --run-id $RUN --workloads W2-1B,W2-8B --systems unsloth \
    --out $OUT/r_gpu0.jsonl --log-dir $L/u0 --time-budget 200 > $OUT/u0.txt 2>&1
  CUDA_VISIBLE_DEVICES=0 python3 benchmarks/harness.py --run-id $RUN --workloads W3 --systems unsloth --w3-cap 262144 \
    --w3-steps 1 --w3-budget 300 --out $OUT/r_gpu0.jsonl --log-dir $L/u1 --time-budget 320 >> $OUT/u0.txt 2>&1 ) &
CUDA_VISIBLE_DEVICES=1 python3 benchmarks/harness.py --run-id $RUN --workloads W3 --systems qlora_kit --w3-steps 1 \
  --w3-budget 380 --out $OUT/r_gpu1.jsonl --log-dir $L/q1 --time-budget 400 > $OUT/q1.txt 2>&1
CUDA_VISIBLE_DEVICES=1 python3 benchmarks/harness.py --run-id $RUN --workloads W3 --systems hf_loop --w3-steps 1 \
  --w3-budget 110 --out $OUT/r_gpu1.jsonl --log-dir $L/h1 --time-budget 120 >> $OUT/q1.txt 2>&1
wait
tar czf $OUT/logs2.tgz -C $L . 2>/dev/null
tail -4 $OUT/u0.txt; tail -4 $OUT/q1.txt
