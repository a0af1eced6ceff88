#!/usr/bin/env bash
# GPU call 56a (one H200, carry .whl): the planning GPU tests after the planner learnt the hashed dropout's
# memory; prepares /tmp/site for call 56b (Unsloth), which must follow on the warm machine.
#   bash benchmarks/gpu/call56a.sh COMMIT
set -u
. benchmarks/gpu/unsloth_sites_env.sh "$1"
timeout 200 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_planning.py > $OUT/gpu_tests56.txt 2>&1
tail -3 $OUT/gpu_tests56.txt; grep -E "^FAILED|^E  .*Error" $OUT/gpu_tests56.txt | head -5
