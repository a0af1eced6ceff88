#!/usr/bin/env bash
# GPU call 13a (one H200, carry .whl): the one-GPU tests at this commit, with the GPU image's packages plus
# .whl (in /tmp/site5); and the packages Unsloth's call 13b builds on (in /tmp/site: no datasets 5 or
# trl 1.16, which Unsloth refuses). Call 13b must follow while the machine is warm.
#   bash benchmarks/gpu/call13a.sh COMMIT
set -u
pip() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "$@"; }
pip --target /tmp/site5 .whl/*.whl || exit 1
pip --target /tmp/site $(ls .whl/*.whl | grep -v -e datasets-5 -e trl-1.16) || exit 1
export PYTHONPATH=/tmp/site5:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
timeout 240 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu > $OUT/gpu_tests13.txt 2>&1
tail -15 $OUT/gpu_tests13.txt
