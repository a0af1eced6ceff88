#!/usr/bin/env bash
# GPU call 32 (one H200, carry .whl and .benchdata; after 26a/26b on the same warm machine): the fixed GPU
# tests of recorded layers (train.cuda_graphs), and where the host's time goes in a step with recorded
# layers: cProfile of the quickstart and of W1 (seed_improved.yaml), both with train.cuda_graphs.
#   bash benchmarks/gpu/call32.sh COMMIT
set -u
. benchmarks/gpu/quickstart_env.sh "$1" > /dev/null 2>&1
export CUDA_VISIBLE_DEVICES=0
timeout 200 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_layer_graphs.py \
  tests/gpu/test_gpu_lora_dropout.py tests/gpu/test_gpu_compile.py > $OUT/gpu_tests32.txt 2>&1
tail -3 $OUT/gpu_tests32.txt
rm -rf /tmp/qs-prof
python3 -c "
import cProfile, sys
import qlora_kit.quickstart.run as q
original = q.quickstart_config
def changed(*args, **kwargs):
    cfg = original(*args, **kwargs)
    return cfg.model_copy(update={'train': cfg.train.model_copy(update={'compile': False, 'cuda_graphs': True}),
                                  'data': cfg.data.model_copy(update={'pad_to_multiple_of': 64})})
q.quickstart_config = changed
from qlora_kit.cli import main
cProfile.run(\"main(['quickstart', '--output-dir', '/tmp/qs-prof'])\", '$OUT/quickstart.prof')" > $OUT/quickstart_prof.txt 2>&1
grep -h "quickstart:\|exact-match" $OUT/quickstart_prof.txt
timeout 200 python3 benchmarks/seed_w1.py --work-dir /tmp/w1-prof --config examples/configs/seed_improved.yaml \
  --data .benchdata/alpaca_en_demo.json --tokenizer .benchdata/gpt2-tokenizer --profile $OUT/w1.prof \
  train.cuda_graphs=true data.pad_to_multiple_of=256 > $OUT/w1_prof.txt 2>&1
grep -h "time:" $OUT/w1_prof.txt
