#!/usr/bin/env bash
# GPU call 53a (one H200, carry .whl): the dropout GPU tests after the fix for inductor merging the
# backward's recomputed mask into the forward's (call 52a). No experiment.
# Prepares /tmp/site for call 51b, which must follow warm.
#   bash benchmarks/gpu/call53a.sh COMMIT
set -u
pip() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "$@"; }
pip --target /tmp/site5 .whl/*.whl || exit 1
pip --target /tmp/site $(ls .whl/*.whl | grep -v -e datasets-5 -e trl-1.16) || exit 1
export PYTHONPATH=/tmp/site5:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export CUDA_VISIBLE_DEVICES=0
PYTHONPATH=/tmp/site5:/tmp/site:$PWD/src python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import harness; harness.precompile_sources(); harness.warm_up_device()"
timeout 200 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_lora_dropout.py > $OUT/gpu_tests53.txt 2>&1
tail -3 $OUT/gpu_tests53.txt; grep -E "^FAILED|^E  .*Error" $OUT/gpu_tests53.txt | head -5
