#!/usr/bin/env bash
# GPU call 53a (one H200, carry .whl): the dropout GPU tests after the fix for inductor merging the
# backward's recomputed mask into the forward's (call 52a). No experiment.
# Prepares /tmp/site for call 51b, which must follow warm.
#   bash benchmarks/gpu/call53a.sh COMMIT
set -u
. benchmarks/gpu/unsloth_sites_env.sh "$1"
timeout 200 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_lora_dropout.py > $OUT/gpu_tests53.txt 2>&1
tail -3 $OUT/gpu_tests53.txt; grep -E "^FAILED|^E  .*Error" $OUT/gpu_tests53.txt | head -5
