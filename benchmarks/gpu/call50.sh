#!/usr/bin/env bash
# GPU call 50 (one H200, carry .whl and .benchdata): 16-bit norm outputs (qlora_kit.model.norms) on W1 with the fused GELU,
# A/B/A/B by timeline; the GPU tests of the session and the recorded layers;
# then W1 in the harness (bytecode compiled and the device warmed up before timing) with the TRL seed recipe.
#   bash benchmarks/gpu/call50.sh COMMIT RUN_ID
set -u
. benchmarks/gpu/gpu_env.sh "$1"
python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import harness; harness.precompile_sources(); harness.warm_up_device()"
W1="--w1-data .benchdata/alpaca_en_demo.json --w1-tokenizer .benchdata/gpt2-tokenizer"
tl() { python3 benchmarks/fit_timeline.py --w1 $W1 --out /tmp/tl_$1.json "${@:2}" > /tmp/tl_$1.txt 2>&1
       echo "== $1: $(grep -E "^time:" /tmp/tl_$1.txt)"; grep -E "step (5|50|250) queued" /tmp/tl_$1.txt; }
tl leanA
tl gelu_onlyB --no-lean-norms
tl leanC
tl gelu_onlyD --no-lean-norms
grep -h "eval loss" /tmp/tl_*.txt | grep "^train:" | cut -c1-120
timeout 240 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_layer_graphs.py tests/gpu/test_gpu_trainer.py \
  tests/gpu/test_gpu_varlen_attention.py tests/gpu/test_gpu_compile.py tests/gpu/test_gpu_step_stats.py tests/gpu/test_gpu_head_loss.py > $OUT/gpu_tests50.txt 2>&1
tail -4 $OUT/gpu_tests50.txt
python3 benchmarks/harness.py --run-id $2 --workloads W1 --systems qlora_kit,trl_seed \
  --out $OUT/results.jsonl --log-dir /tmp/qk-logs/w1-50 --time-budget 230 \
  --w1-data .benchdata/alpaca_en_demo.json --w1-tokenizer .benchdata/gpt2-tokenizer > $OUT/harness50.txt 2>&1
grep -E "\[harness\]" $OUT/harness50.txt | cut -c1-300
mkdir -p $OUT/logs && cp /tmp/qk-logs/w1-50/*qlora_kit.log $OUT/logs/ 2>/dev/null
