#!/usr/bin/env bash
# GPU call 46 (one H200, carry .whl and .benchdata): where the W1 command's time goes outside training.
# Import times of the CLI, bitsandbytes and CUDA's start, then the W1 command twice (seed_improved.yaml):
# once under cProfile (the host's time by function), once plain; each run's train.log keeps the phase times.
#   bash benchmarks/gpu/call46.sh COMMIT
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl > /dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export CUDA_VISIBLE_DEVICES=0
t() { local s=$(date +%s.%N); "$@" > /dev/null 2>&1; echo "$(echo "$(date +%s.%N) - $s" | bc) s: $*"; }
t python3 -c "pass"
t python3 -c "import torch"
t python3 -c "import torch; torch.zeros(1, device='cuda')"
t python3 -c "import bitsandbytes"
t python3 -c "import transformers, peft"
t python3 -c "import qlora_kit.cli.__main__"
python3 -X importtime -c "import qlora_kit.cli.__main__" 2> $OUT/importtime.txt
w1() { python3 benchmarks/seed_w1.py --config examples/configs/seed_improved.yaml --data .benchdata/alpaca_en_demo.json \
  --tokenizer .benchdata/gpt2-tokenizer --work-dir /tmp/w1-$1 "${@:2}"; }
w1 prof --profile $OUT/w1.prof > $OUT/w1_prof.json 2> $OUT/w1_prof.txt
cp /tmp/w1-prof/run/train.log $OUT/w1_prof_train.log
w1 plain > $OUT/w1_plain.json 2> $OUT/w1_plain.txt
cp /tmp/w1-plain/run/train.log $OUT/w1_plain_train.log
cat $OUT/w1_prof.json $OUT/w1_plain.json | cut -c1-400
