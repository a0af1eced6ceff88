#!/usr/bin/env bash
# GPU call 29 (one H200, carry .whl; after 26a and 26b put the quickstart wheel's halves in /tmp/qs on the same
# warm machine). Run at f07a492, whose quickstart used train.compile: cuda_graphs with every pass padded to
# data.max_length (since then it compiles without graphs, in its own layout): call 26c's two quickstart runs
# (the first converts the GGUF and compiles from nothing, the second finds both cached), then the CUDA-graph
# GPU test (losses as eager with two passes per step).
# Predicted: training ~120 x 0.04 s + compilation; the second run's training under 10 s.
#   bash benchmarks/gpu/call29.sh COMMIT
set -u
bash benchmarks/gpu/call26c.sh "$1"
grep -h "train: 120 steps\|compile:" $OUT/quickstart1.log $OUT/quickstart2.log | cut -c1-150
timeout 60 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_compile.py -k cuda_graphs > $OUT/gpu_tests29.txt 2>&1
tail -1 $OUT/gpu_tests29.txt
