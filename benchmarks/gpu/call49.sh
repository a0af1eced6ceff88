#!/usr/bin/env bash
# GPU call 49 (one H200, carry .whl and .benchdata): the fused tanh GELU (qlora_kit.model.activations) on W1,
# A/B/A by timeline, and the eval at step 0 off once; the GPU tests of the session and the recorded layers;
# then W1 in the harness (bytecode compiled and the device warmed up before timing) with the TRL seed recipe.
#   bash benchmarks/gpu/call49.sh COMMIT RUN_ID
set -u
. benchmarks/gpu/gpu_env.sh "$1"
python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import harness; harness.precompile_sources(); harness.warm_up_device()"
W1="--w1-data .benchdata/alpaca_en_demo.json --w1-tokenizer .benchdata/gpt2-tokenizer"
tl() { python3 benchmarks/fit_timeline.py --w1 $W1 --out $OUT/tl_$1.json "${@:2}" > $OUT/tl_$1.txt 2>&1
       echo "== $1: $(grep -E '^time:' $OUT/tl_$1.txt)"; grep -E "step (1|5|50|100|258) queued|finish end|evaluation end" $OUT/tl_$1.txt | head -4; }
tl fusedA
tl plainB --no-fused-activations
tl fusedC
tl noeval0 -- train.eval_at_start=false
timeout 200 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_layer_graphs.py tests/gpu/test_gpu_trainer.py \
  tests/gpu/test_gpu_varlen_attention.py tests/gpu/test_gpu_compile.py tests/gpu/test_gpu_step_stats.py > $OUT/gpu_tests49.txt 2>&1
tail -4 $OUT/gpu_tests49.txt
python3 benchmarks/harness.py --run-id $2 --workloads W1 --systems qlora_kit,trl_seed \
  --out $OUT/results.jsonl --log-dir /tmp/qk-logs/w1-49 --time-budget 230 \
  --w1-data .benchdata/alpaca_en_demo.json --w1-tokenizer .benchdata/gpt2-tokenizer > $OUT/harness49.txt 2>&1
grep -E "\[harness\]" $OUT/harness49.txt | cut -c1-300
mkdir -p $OUT/logs && cp /tmp/qk-logs/w1-49/*qlora_kit.log $OUT/logs/ 2>/dev/null
