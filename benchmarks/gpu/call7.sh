#!/usr/bin/env bash
# GPU call 7 (nvidia-h200-x2, carry .whl and .benchdata): FSDP2 again after the DTensor gradient-norm fix
# (test + the W4-fsdp row, added to the run of benchmarks/gpu/results_in.jsonl), then a torch.profiler
# summary of W1 steps with seed_improved.yaml (the `profile` callback).
#   bash benchmarks/gpu/call7.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
RUN=$2; L=$OUT/logs; mkdir -p $L; cp benchmarks/gpu/results_in.jsonl $OUT/results.jsonl
timeout 150 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_distributed.py > $L/gpu_tests7.txt 2>&1
W4="benchmarks/w4_multi_gpu.py --run-id $RUN --out $OUT/results.jsonl --steps 6 --warmup 2"
timeout 120 python3 -m accelerate.commands.launch --config_file examples/accelerate/fsdp2.yaml --num_processes 2 $W4 --mode fsdp > $L/fsdp.txt 2>&1
timeout 200 python3 benchmarks/seed_w1.py --config examples/configs/seed_improved.yaml --work-dir /tmp/w1p \
  --tokenizer .benchdata/gpt2-tokenizer --data .benchdata/alpaca_en_demo.json --max-steps 60 \
  "train.callbacks=[{kind: profile, start: 30, steps: 20, path: $OUT/prof}]" > $L/w1prof.txt 2>&1
tail -3 $L/gpu_tests7.txt; tail -2 $L/fsdp.txt | cut -c1-900; tail -2 $L/w1prof.txt | cut -c1-600; cat $OUT/prof/summary.json
