# Sourced by the GPU calls (48 on) as `. benchmarks/gpu/gpu_env.sh COMMIT` on the GPU machine (carry .whl):
# installs the carried wheels into /tmp/site and sets the environment of every benchmark process there.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl > /dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export CUDA_VISIBLE_DEVICES=0
