#!/usr/bin/env bash
# GPU call 3 (no carry; the machine still warm): two GPUs together. The DDP and FSDP2 launch commands on a
# tiny model (tests/gpu/test_gpu_distributed.py), then W4: the 8B shape on one GPU, DDP and FSDP2 on two.
#   bash benchmarks/gpu/call3.sh COMMIT RUN_ID
set -u
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
RUN=$2; O=$OUT/r_w4.jsonl; L=$OUT/w4.txt
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_distributed.py > $OUT/dist_tests.txt 2>&1
for mode in single ddp fsdp; do
  if [ $mode = single ]; then launcher="python3"; else
    launcher="python3 -m accelerate.commands.launch --config_file examples/accelerate/${mode/fsdp/fsdp2}.yaml --num_processes 2"; fi
  timeout 150 $launcher benchmarks/w4_multi_gpu.py --mode $mode --run-id $RUN --out $O >> $L 2>&1 || echo "$mode failed" >> $L
done
tail -4 $OUT/dist_tests.txt; grep -E "failed|W4" $L | cut -c1-400
