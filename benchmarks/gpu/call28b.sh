#!/usr/bin/env bash
# GPU call 28b (one H200, carry .whl and .benchdata; after 26a and 26b put the quickstart wheel's halves in
# /tmp/qs on the same warm machine): the quickstart with its decoder layers compiled (train.compile's `auto`
# threshold lowered to 0 from outside), twice: the first run converts the GGUF and compiles from nothing, the
# second finds both cached, as a user's second run does. Then W1 with train.compile=true beside the defaults.
#   bash benchmarks/gpu/call28b.sh COMMIT RUN_ID
set -u
. benchmarks/gpu/quickstart_env.sh "$1"
export CUDA_VISIBLE_DEVICES=0
for i in 1 2; do
  rm -rf /tmp/qsc$i
  /usr/bin/time -f "quickstart compiled $i: wall %e s" python3 -c "
import sys
import qlora_kit.training.compiling as c
c.AUTO_MIN_HIDDEN = 0
from qlora_kit.cli import main
sys.exit(main(['quickstart', '--output-dir', '/tmp/qsc$i']))" > $OUT/quickstart_c$i.txt 2>&1
  cp /tmp/qsc$i/train.log $OUT/quickstart_c$i.log 2>/dev/null
done
RUN=$2; L=/tmp/qk-logs; mkdir -p $L; touch $OUT/results.jsonl
python3 benchmarks/harness.py --run-id $RUN --workloads W1 --systems qlora_kit,qlora_kit:compile \
  --variant compile=train.compile=true --out $OUT/results.jsonl --log-dir $L/w1 --time-budget 200 \
  --w1-data .benchdata/alpaca_en_demo.json --w1-tokenizer .benchdata/gpt2-tokenizer > $OUT/call28b.txt 2>&1
tail -5 $OUT/quickstart_c1.txt; tail -5 $OUT/quickstart_c2.txt
grep -h "compile\|train: 120\|\[.*s\]" $OUT/quickstart_c2.log | cut -c1-170
grep -E "\] W1" $OUT/call28b.txt
# the step with CUDA graphs (call 28a ran out of time before it)
timeout 90 python3 benchmarks/cpu_step.py --device cuda --model /tmp/qk-shapes/llama-135M --batch 8 --seq 32 --steps 40 \
  --warmup 6 --grad-checkpointing off --dropout 0 --system ours --ours-overrides train.compile=true \
  --compile-mode reduce-overhead 2>$OUT/graphs.err | tail -1 | cut -c1-300
