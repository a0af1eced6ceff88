#!/usr/bin/env bash
# GPU call 48 (one H200, carry .whl and .benchdata): the W1 command with the machine's packages compiled to
# bytecode first (harness.precompile_sources, as pip does on a user's install), then W1's timeline twice
# (plain; with torch.profiler over steps 101-110: the device's kernels by time).
#   bash benchmarks/gpu/call48.sh COMMIT
set -u
. benchmarks/gpu/gpu_env.sh "$1"
python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import harness; harness.precompile_sources()"
W1="--w1-data .benchdata/alpaca_en_demo.json --w1-tokenizer .benchdata/gpt2-tokenizer"
python3 benchmarks/seed_w1.py --config examples/configs/seed_improved.yaml --data .benchdata/alpaca_en_demo.json \
  --tokenizer .benchdata/gpt2-tokenizer --work-dir /tmp/w1-cmd > $OUT/w1_cmd.json 2> $OUT/w1_cmd.txt
cp /tmp/w1-cmd/run/train.log $OUT/w1_cmd_train.log; cut -c1-300 $OUT/w1_cmd.json
python3 benchmarks/fit_timeline.py --w1 $W1 --out $OUT/tl_w1.json > $OUT/tl_w1.txt 2>&1; tail -40 $OUT/tl_w1.txt
python3 benchmarks/fit_timeline.py --w1 $W1 --out $OUT/tl_w1_prof.json -- \
  "train.callbacks=[{kind: profile, start: 100, steps: 10, path: $OUT/prof_w1}]" > $OUT/tl_w1_prof.txt 2>&1
grep -E "profiled" $OUT/tl_w1_prof.txt; head -45 $OUT/prof_w1/ops.txt | cut -c1-200
