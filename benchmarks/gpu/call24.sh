#!/usr/bin/env bash
# GPU call 24 (one H200, carry .whl and .benchdata): where a W1 command's time goes outside training (call 10's
# second half, which never ran): Python imports (-X importtime) and a 3-step W1 run's phase lines (train.log).
#   bash benchmarks/gpu/call24.sh COMMIT
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
python3 -X importtime -m qlora_kit.cli --version 2> $OUT/importtime.txt
for i in 1 2; do
  /usr/bin/time -f "wall %e s" timeout 90 python3 benchmarks/seed_w1.py --config examples/configs/seed_improved.yaml --work-dir /tmp/w1s$i \
    --tokenizer .benchdata/gpt2-tokenizer --data .benchdata/alpaca_en_demo.json --max-steps 3 > $OUT/w1s$i.json 2> $OUT/w1s$i.err
  cp /tmp/w1s$i/run/train.log $OUT/train$i.log 2>/dev/null
done
cut -c1-400 $OUT/w1s2.json; tail -2 $OUT/w1s2.err; grep -h "\[.*s\]" $OUT/train2.log | cut -c1-160
sort -t'|' -k2 -n -r $OUT/importtime.txt | head -8
