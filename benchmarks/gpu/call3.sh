#!/usr/bin/env bash
# GPU call 3 (carry .benchdata, the machine still warm): all GPU tests, W1 (qlora_kit's two configs and the
# TRL recipe), and W3 for the HF loop (W3's reference).   bash benchmarks/gpu/call3.sh COMMIT RUN_ID
set -u
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
RUN=$2; L=/tmp/qk-logs; mkdir -p $L; cp benchmarks/gpu/results_in.jsonl $OUT/results.jsonl 2>/dev/null
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu > $OUT/gpu_tests3.txt 2>&1
python3 benchmarks/harness.py --run-id $RUN --workloads W1,W1-seed-exact --systems qlora_kit,trl_seed --out $OUT/results.jsonl \
  --log-dir $L/w1 --time-budget 290 --w1-data .benchdata/alpaca_en_demo.json --w1-tokenizer .benchdata/gpt2-tokenizer > $OUT/call3.txt 2>&1
python3 benchmarks/harness.py --run-id $RUN --workloads W3 --systems hf_loop --w3-steps 1 --w3-budget 100 \
  --out $OUT/results.jsonl --log-dir $L/h3 --time-budget 110 >> $OUT/call3.txt 2>&1
tar czf $OUT/logs3.tgz -C $L . 2>/dev/null
tail -3 $OUT/gpu_tests3.txt; tail -12 $OUT/call3.txt
