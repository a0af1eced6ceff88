#!/usr/bin/env bash
# GPU call 19 (one H200, carry .whl): why does a second pass per step cost ~90 ms on the 8B shape (call 18)?
# torch.profiler (the `profile` callback, steps 4-5) on W2-8B: one 4,096-token pass, two 2,048-token passes,
# and the 16 GiB budget's 26 checkpointed layers: device-busy share, launches and syncs per step.
#   bash benchmarks/gpu/call19.sh COMMIT RUN_ID
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
RUN=$2; L=/tmp/qk-logs; mkdir -p $L; touch $OUT/results.jsonl
for v in one=train.seed=0 p2048=train.micro_batch_tokens=2048 lean16=train.memory_budget_gib=16; do
  name=${v%%=*}
  python3 benchmarks/harness.py --run-id $RUN --workloads W2-8B --systems qlora_kit:$name --variant $v \
    --ours-overrides "train.callbacks=[{kind: profile, start: 3, steps: 2, path: $OUT/prof-$name}]" \
    --out $OUT/results.jsonl --log-dir $L/$name >> $OUT/call19.txt 2>&1
  echo "== $name"; cat $OUT/prof-$name/summary.json | head -12; head -25 $OUT/prof-$name/ops_host.txt | cut -c1-200
done
