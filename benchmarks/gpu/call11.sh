#!/usr/bin/env bash
# GPU call 11 (nvidia-h200-x2, carry .whl): W4 on one GPU and under FSDP2 after the root reshard following the
# forward check (memory after loading). (The FSDP2 launch test did not fit the device time left.)
#   bash benchmarks/gpu/call11.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
RUN=$2; L=$OUT/logs; mkdir -p $L; touch $OUT/results.jsonl
W4="benchmarks/w4_multi_gpu.py --run-id $RUN --out $OUT/results.jsonl --steps 6 --warmup 2"
timeout 100 python3 $W4 --mode single > $L/single.txt 2>&1
timeout 80 python3 -m accelerate.commands.launch --config_file examples/accelerate/fsdp2.yaml --num_processes 2 $W4 --mode fsdp > $L/fsdp.txt 2>&1

for m in single fsdp; do echo "== $m"; tail -1 $L/$m.txt | cut -c1-300; done
python3 -c "
import json
for l in open('$OUT/results.jsonl'):
    r = json.loads(l); print(r['system'], r.get('tokens_per_s'), r.get('mem_after_prepare_gib'), r.get('mem_after_prepare_vs_single'), r.get('ratio'), r.get('peak_gib'))"
