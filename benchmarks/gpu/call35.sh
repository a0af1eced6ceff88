#!/usr/bin/env bash
# GPU call 35 (one H200, carry .whl and .benchdata; after 26a and 26b on the same warm machine): NOT RUN YET.
# Where the time of a step goes once the layers are recorded (benchmarks/step_phases.py): the quickstart's
# own config, and W1 at its defaults and with recorded layers; plus the quickstart at HEAD (its scoring in
# one pass of 64 rows, not yet measured on the GPU).
#   bash benchmarks/gpu/call35.sh COMMIT
set -u
. benchmarks/gpu/quickstart_env.sh "$1" > /dev/null 2>&1
export CUDA_VISIBLE_DEVICES=0
for run in 1 2; do
  rm -rf /tmp/qs-$run
  python3 -m qlora_kit.cli quickstart --output-dir /tmp/qs-$run > $OUT/quickstart_$run.txt 2>&1
  grep -h "exact-match\|quickstart:\|time:" $OUT/quickstart_$run.txt
done
python3 benchmarks/step_phases.py --skip 10 --out $OUT/phases_quickstart.json -- /tmp/qs-2/run_config.yaml \
  output_dir=/tmp/qs-phases 2>&1 | tail -11
for variant in "" "train.cuda_graphs=true data.pad_to_multiple_of=256"; do
  python3 benchmarks/step_phases.py --skip 20 --w1 --w1-data .benchdata/alpaca_en_demo.json \
    --w1-tokenizer .benchdata/gpt2-tokenizer -- $variant 2>&1 | tail -11
done
