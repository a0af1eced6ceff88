#!/usr/bin/env bash
# GPU call 41 (one H200, carry .whl and .benchdata): `sdpa_varlen` (packed passes through flash attention's
# variable-length kernel; the default on CUDA). Its GPU tests and the recorded-layer tests, then W1's step by
# phase with it, recorded layers and eager (for the kernel table).
#   bash benchmarks/gpu/call41.sh
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl > /dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD/src HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
timeout 200 python3 -m pytest -q -p no:cacheprovider -rs -x tests/gpu/test_gpu_varlen_attention.py \
  tests/gpu/test_gpu_layer_graphs.py > $OUT/gpu_tests41.txt 2>&1
tail -15 $OUT/gpu_tests41.txt
phases() {
  python3 benchmarks/step_phases.py --skip 60 --kernels "$1" --w1 --w1-data .benchdata/alpaca_en_demo.json \
    --w1-tokenizer .benchdata/gpt2-tokenizer -- train.max_steps=160 "${@:2}" 2>&1 | grep -v Warning \
    | grep -E "^ |per step|time:|attention:|Error|error" | head -"${HEAD:-40}"
}
echo "== varlen, graphs"; HEAD=45 phases 5

echo "== varlen, eager layers"; HEAD=70 phases 5 train.cuda_graphs=false
