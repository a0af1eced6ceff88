#!/usr/bin/env bash
# GPU call 31a (one H200, carry .whl; after 26a and 26b put the quickstart wheel's halves in /tmp/qs on the
# same warm machine): train.cuda_graphs (layers recorded without compilation, training/layer_graphs.py).
#  1. the GPU tests of recorded layers, the light dropout and compiled layers;
#  2. the quickstart with recorded layers (compile off), passes rounded to 64 tokens (few shapes).
#   bash benchmarks/gpu/call31a.sh COMMIT
set -u
. benchmarks/gpu/quickstart_env.sh "$1"
export CUDA_VISIBLE_DEVICES=0
timeout 240 python3 -m pytest -q -p no:cacheprovider -rs -x tests/gpu/test_gpu_layer_graphs.py \
  tests/gpu/test_gpu_lora_dropout.py tests/gpu/test_gpu_compile.py > $OUT/gpu_tests31.txt 2>&1
tail -15 $OUT/gpu_tests31.txt
quickstart() {  # NAME, then a Python dict of train overrides and one of data overrides
  rm -rf /tmp/qs-$1
  python3 -c "
import sys
import qlora_kit.quickstart.run as q
original = q.quickstart_config
def changed(*args, **kwargs):
    cfg = original(*args, **kwargs)
    return cfg.model_copy(update={'train': cfg.train.model_copy(update=$2), 'data': cfg.data.model_copy(update=$3)})
q.quickstart_config = changed
from qlora_kit.cli import main
sys.exit(main(['quickstart', '--output-dir', '/tmp/qs-$1', '-v']))" > $OUT/quickstart_$1.txt 2>&1
  grep -h "exact-match\|train loss:\|quickstart:\|cuda_graphs\|Traceback\|Error" $OUT/quickstart_$1.txt | head -20
}
quickstart graphs "{'compile': False, 'cuda_graphs': True}" "{'pad_to_multiple_of': 64}"
quickstart graphs2 "{'compile': False, 'cuda_graphs': True}" "{'pad_to_multiple_of': 64}"
