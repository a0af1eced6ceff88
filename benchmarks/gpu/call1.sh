#!/usr/bin/env bash
# GPU call 1 of a benchmark lease on nvidia-h200-x2 (carry .whl and .benchdata): GPU 0 runs the gpu tests
# then W1 (qlora_kit vs the TRL recipe); GPU 1 runs W2 (qlora_kit, dropout 0, HF loop, HF + Liger), in parallel.
#   bash benchmarks/gpu/call1.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
RUN=$2; L=/tmp/qk-logs; mkdir -p $L
nvidia-smi -L
( CUDA_VISIBLE_DEVICES=0 timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu --ignore=tests/gpu/test_gpu_distributed.py > $OUT/gpu_tests.txt 2>&1
  CUDA_VISIBLE_DEVICES=0 python3 benchmarks/harness.py --run-id $RUN --workloads W1,W1-seed-exact --systems qlora_kit,trl_seed \
    --out $OUT/r_gpu0.jsonl --log-dir $L/g0 --time-budget 330 --w1-data .benchdata/alpaca_en_demo.json \
    --w1-tokenizer .benchdata/gpt2-tokenizer > $OUT/g0.txt 2>&1 ) &
CUDA_VISIBLE_DEVICES=1 python3 benchmarks/harness.py --run-id $RUN --workloads W2-1B,W2-8B \
  --systems qlora_kit,qlora_kit_dropout0,hf_loop,hf_liger --out $OUT/r_gpu1.jsonl --log-dir $L/g1 --time-budget 520 > $OUT/g1.txt 2>&1
wait
tar czf $OUT/logs1.tgz -C $L . 2>/dev/null
tail -4 $OUT/gpu_tests.txt; tail -4 $OUT/g0.txt; tail -4 $OUT/g1.txt
