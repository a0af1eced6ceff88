#!/usr/bin/env bash
# GPU call 10 (one H200, carry .whl and .benchdata): NOT RUN YET (no device time left). The one-GPU tests at this commit, then where a W1 command's
# time goes outside training: Python imports (-X importtime) and a 3-step W1 run's timestamped train.log.
#   bash benchmarks/gpu/call10.sh COMMIT
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
timeout 120 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu > $OUT/gpu_tests10.txt 2>&1
python3 -X importtime -m qlora_kit.cli --version 2> $OUT/importtime.txt
timeout 60 python3 benchmarks/seed_w1.py --config examples/configs/seed_improved.yaml --work-dir /tmp/w1s \
  --tokenizer .benchdata/gpt2-tokenizer --data .benchdata/alpaca_en_demo.json --max-steps 3 > $OUT/w1s.json 2> $OUT/w1s.err
cp /tmp/w1s/run/train.log $OUT/ 2>/dev/null
tail -3 $OUT/gpu_tests10.txt; cat $OUT/w1s.json | cut -c1-300; grep "\[.*s\]\|time:" $OUT/w1s.err
sort -t'|' -k2 -n -r $OUT/importtime.txt | head -12
