#!/usr/bin/env bash
# GPU call 8 (nvidia-h200-x2, carry .whl and .benchdata): the two-GPU tests and the loss tests after the FSDP
# export and DTensor fixes and the fused loss's plain head for small passes; W4 on one GPU and under FSDP2
# (one run id); then the profile of W1 steps with seed_improved.yaml again.
#   bash benchmarks/gpu/call8.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
RUN=$2; L=$OUT/logs; mkdir -p $L; touch $OUT/results.jsonl
timeout 170 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_distributed.py tests/gpu/test_gpu_head_loss.py > $L/gpu_tests8.txt 2>&1
W4="benchmarks/w4_multi_gpu.py --run-id $RUN --out $OUT/results.jsonl --steps 6 --warmup 2"
timeout 110 python3 $W4 --mode single > $L/single.txt 2>&1
timeout 100 python3 -m accelerate.commands.launch --config_file examples/accelerate/fsdp2.yaml --num_processes 2 $W4 --mode fsdp > $L/fsdp.txt 2>&1
timeout 110 python3 benchmarks/seed_w1.py --config examples/configs/seed_improved.yaml --work-dir /tmp/w1p \
  --tokenizer .benchdata/gpt2-tokenizer --data .benchdata/alpaca_en_demo.json --max-steps 60 \
  "train.callbacks=[{kind: profile, start: 30, steps: 20, path: $OUT/prof}]" > $L/w1prof.txt 2>&1
tail -3 $L/gpu_tests8.txt; for m in single fsdp; do echo "== $m"; tail -2 $L/$m.txt | cut -c1-1200; done
tail -1 $L/w1prof.txt | cut -c1-400; cat $OUT/prof/summary.json
