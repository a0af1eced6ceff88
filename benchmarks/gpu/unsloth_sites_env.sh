# Sourced by GPU calls that precede an Unsloth call (51a, 52a, 53a) as `. benchmarks/gpu/unsloth_sites_env.sh
# COMMIT` on the GPU machine (carry .whl): the carried wheels into /tmp/site5 (this call's packages) and, without
# datasets 5 and trl 1.16 (which Unsloth refuses), into /tmp/site, which the Unsloth call adds its wheels to;
# bytecode compiled and the device warmed up (neither timed).
pip_in() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$@"; }
pip_in /tmp/site5 .whl/*.whl || exit 1
pip_in /tmp/site $(ls .whl/*.whl | grep -v -e datasets-5 -e trl-1.16) || exit 1
export PYTHONPATH=/tmp/site5:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export CUDA_VISIBLE_DEVICES=0
PYTHONPATH=/tmp/site5:/tmp/site:$PWD/src python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import harness; harness.precompile_sources(); harness.warm_up_device()"
