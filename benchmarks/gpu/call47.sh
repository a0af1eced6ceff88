#!/usr/bin/env bash
# GPU call 47 (one H200, carry .whl): does the machine cache Python bytecode? Import times of the W1 command's
# libraries, each timed twice, without and with PYTHONPYCACHEPREFIX (a writable bytecode cache).
#   bash benchmarks/gpu/call47.sh
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl > /dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD/src HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
env | grep -i "^PYTHON" ; id -u
python3 - <<'PY'
import os, sys, glob, torch
d = os.path.dirname(torch.__file__)
print("dont_write_bytecode", sys.flags.dont_write_bytecode, "torch dir writable", os.access(d, os.W_OK),
      "torch pyc files", len(glob.glob(d + "/__pycache__/*.pyc")), "cache tag", sys.implementation.cache_tag)
PY
t() { local s=$(date +%s%N); "$@" > /dev/null 2>&1; echo "$(( ($(date +%s%N) - s) / 1000000 )) ms: $*"; }
for round in 1 2; do
  t python3 -c "import torch"
  t python3 -c "import torch; torch.zeros(1, device='cuda')"
  t python3 -c "import bitsandbytes"
  t python3 -c "import transformers, peft, datasets"
  t python3 -c "import qlora_kit.cli.__main__, qlora_kit.recipe, bitsandbytes, transformers, peft, datasets"
done
export PYTHONPYCACHEPREFIX=/tmp/pyc
for round in 1 2 3; do
  t python3 -c "import torch"
  t python3 -c "import qlora_kit.cli.__main__, qlora_kit.recipe, bitsandbytes, transformers, peft, datasets"
done
python3 -X importtime -c "import bitsandbytes, peft, datasets, transformers, qlora_kit.recipe" 2> $OUT/importtime_cached.txt
