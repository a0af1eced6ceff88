#!/usr/bin/env bash
# GPU call 28a (one H200, carry .whl): the quickstart's step on the H200, where the host bounds it. The
# SmolLM2-135M shape (random weights, w2_shapes.py), NF4, LoRA r16 all-linear, dropout 0, no checkpointing,
# torch AdamW, 8 rows x 32 tokens per step (the quickstart's 0.30 s steps, run 2026-11-30 call 26c): eager
# (with torch.profiler's host/device tables), each decoder layer compiled, compiled with CUDA graphs
# ("reduce-overhead"), and the plain transformers + PEFT + bnb loop; then the fixed compiled light-dropout test.
# Predicted: compiled ~40 ms per step against ~250 ms eager (one graph call per layer instead of ~7 PEFT +
# bnb wrappers, each ~250 us of host time).
#   bash benchmarks/gpu/call28a.sh
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
python3 benchmarks/w2_shapes.py --root /tmp/qk-shapes --shapes 135M > $OUT/call28a.txt 2>&1
S="python3 benchmarks/cpu_step.py --device cuda --model /tmp/qk-shapes/llama-135M --batch 8 --seq 32 --steps 40 --warmup 6 --grad-checkpointing off --dropout 0"
echo "== eager, profiled" >> $OUT/call28a.txt
$S --system ours --torch-profile $OUT/eager_profile.txt 2>>$OUT/call28a.err | tail -1 >> $OUT/call28a.txt
echo "== eager" >> $OUT/call28a.txt
$S --system ours 2>>$OUT/call28a.err | tail -1 >> $OUT/call28a.txt
echo "== compiled" >> $OUT/call28a.txt
$S --system ours --ours-overrides train.compile=true 2>>$OUT/call28a.err | tail -1 >> $OUT/call28a.txt
echo "== compiled, profiled" >> $OUT/call28a.txt
$S --system ours --ours-overrides train.compile=true --torch-profile $OUT/compiled_profile.txt 2>>$OUT/call28a.err | tail -1 >> $OUT/call28a.txt
echo "== compiled, reduce-overhead" >> $OUT/call28a.txt
$S --system ours --ours-overrides train.compile=true --compile-mode reduce-overhead 2>>$OUT/call28a.err | tail -1 >> $OUT/call28a.txt
echo "== plain loop" >> $OUT/call28a.txt
$S --system plain 2>>$OUT/call28a.err | tail -1 >> $OUT/call28a.txt
timeout 150 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_gpu_lora_dropout.py > $OUT/gpu_tests28.txt 2>&1
tail -1 $OUT/gpu_tests28.txt
python3 -c "
import json,sys
for l in open('$OUT/call28a.txt'):
    if l.startswith('=='): print(l.strip()); continue
    try: r=json.loads(l)
    except Exception: print(l.strip()[:200]); continue
    print(' ', r['system'], 's/step', r['s_per_step'], 'cpu s/step', r['cpu_s_per_step'], 'loss', r['loss_first'], r['loss_last'], 'load', r['load_seconds'])
"
tail -5 $OUT/call28a.err
