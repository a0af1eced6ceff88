#!/usr/bin/env bash
# GPU call 15 (one H200, carry .whl): the long-row attention lever. cuDNN vs flash attention at long lengths
# (sdpa_long.py), the kernel test, then W3 for qlora_kit (dropout 0): 65,536 tokens with every layer
# checkpointed, offload off and on (the offload throughput target), and one step at 262,144 (auto settings).
#   bash benchmarks/gpu/call15.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
RUN=$2; L=/tmp/qk-logs; mkdir -p $L; touch $OUT/results.jsonl
timeout 90 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_kernels.py > $OUT/gpu_tests15.txt 2>&1
V="--variant ck=adapter.dropout=0,train.grad_checkpointing=true,train.activation_offload=false"
V="$V --variant ckoff=adapter.dropout=0,train.grad_checkpointing=true,train.activation_offload=true"
python3 benchmarks/harness.py --run-id $RUN --workloads W3 --systems qlora_kit:ck,qlora_kit:ckoff $V \
  --w3-start 65536 --w3-cap 65536 --w3-steps 2 --out $OUT/results.jsonl --log-dir $L/w3a > $OUT/call15.txt 2>&1
python3 benchmarks/harness.py --run-id $RUN --workloads W3 --systems qlora_kit_dropout0 \
  --w3-start 262144 --w3-cap 262144 --w3-steps 1 --w3-budget 400 --out $OUT/results.jsonl --log-dir $L/w3b >> $OUT/call15.txt 2>&1
grep -h "memory:" $L/*/*.log | head -5 >> $OUT/call15.txt
tar czf $OUT/logs15.tgz -C $L . 2>/dev/null
tail -3 $OUT/gpu_tests15.txt; tail -12 $OUT/call15.txt
