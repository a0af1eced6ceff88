#!/usr/bin/env bash
# GPU call 26c (one H200, carry .whl; after 26a and 26b of quickstart_parts.sh on the same warm machine): the
# quickstart on the H200 (issue 10's target: at most 25 s in all, training at most 5 s, 64/64 correct),
# twice (the second run finds the converted GGUF in its cache, as a user's second run does).
#   bash benchmarks/gpu/call26c.sh COMMIT
set -u
. benchmarks/gpu/quickstart_env.sh "$1"
for i in 1 2; do
  rm -rf /tmp/qs-run$i
  /usr/bin/time -f "quickstart $i: wall %e s" python3 -m qlora_kit.cli quickstart --output-dir /tmp/qs-run$i > $OUT/quickstart$i.txt 2>&1
  cp /tmp/qs-run$i/train.log $OUT/quickstart$i.log 2>/dev/null
done
tail -4 $OUT/quickstart1.txt; tail -6 $OUT/quickstart2.txt; grep -h "\[.*s\]" $OUT/quickstart2.log | cut -c1-160
