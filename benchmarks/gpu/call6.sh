#!/usr/bin/env bash
# GPU call 6 (nvidia-h200-x2, carry .whl): the GPU tests call 5 failed (two-GPU launches, trainer resume), then W4 on
# the 8B shape: one GPU, DDP and FSDP2 through the documented launch configs.
#   bash benchmarks/gpu/call6.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
RUN=$2; L=$OUT/w4logs; mkdir -p $L
nvidia-smi --query-gpu=name,memory.total --format=csv > $OUT/gpus.txt 2>&1
timeout 130 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_distributed.py tests/gpu/test_gpu_trainer.py > $OUT/gpu_tests6.txt 2>&1
W4="benchmarks/w4_multi_gpu.py --run-id $RUN --out $OUT/results.jsonl --steps 6 --warmup 2"
timeout 100 python3 $W4 --mode single > $L/single.txt 2>&1
timeout 100 python3 -m accelerate.commands.launch --config_file examples/accelerate/ddp.yaml --num_processes 2 $W4 --mode ddp > $L/ddp.txt 2>&1
timeout 110 python3 -m accelerate.commands.launch --config_file examples/accelerate/fsdp2.yaml --num_processes 2 $W4 --mode fsdp > $L/fsdp.txt 2>&1
tail -5 $OUT/gpu_tests6.txt; for m in single ddp fsdp; do echo "== $m"; tail -3 $L/$m.txt | cut -c1-600; done
