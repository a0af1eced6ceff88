#!/usr/bin/env bash
# GPU call 1 of a benchmark lease on one H200 (carry .whl): the GPU tests of the new loss and offload
# paths, then W2 for qlora_kit (defaults, and LoRA dropout 0), the HF + PEFT + bnb loop, and the loop + Liger.
#   bash benchmarks/gpu/call1.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
RUN=$2; L=/tmp/qk-logs; mkdir -p $L; nvidia-smi -L
timeout 130 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_head_loss.py tests/gpu/test_gpu_offload.py \
  tests/gpu/test_gpu_trainer.py > $OUT/gpu_tests1.txt 2>&1
python3 benchmarks/harness.py --run-id $RUN --workloads W2-8B,W2-1B --systems qlora_kit,hf_loop,qlora_kit_dropout0,hf_liger \
  --out $OUT/results.jsonl --log-dir $L/w2 --time-budget 410 > $OUT/call1.txt 2>&1
tar czf $OUT/logs1.tgz -C $L . 2>/dev/null
tail -3 $OUT/gpu_tests1.txt; tail -12 $OUT/call1.txt
