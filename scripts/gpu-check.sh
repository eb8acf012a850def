#!/usr/bin/env bash
# The GPU check in one call on a CUDA machine:
#   exactness of every zoo model and method on CUDA, the callback under the single-device, DDP,
#   FSDP (FSDP1) and ModelParallelStrategy (FSDP2) strategies on one GPU, then the benchmark at
#   GPU sizes (ResNet-18 N=512, an N=8192 probe on a 10.5M MLP, BERT-base N=256 x 128 tokens).
# Uses the machine's own python3 (torch, lightning, transformers, pytest installed) and the
# package from this checkout; nothing is installed. Logs go to $OUT if set, else ./gpu-check.
# The tables of bench.txt go into docs/performance.md with the card's name.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
python="${PYTHON:-python3}"
status=0
{
    date -u
    nvidia-smi -L
    "$python" -c "import torch, lightning, transformers; print('torch', torch.__version__, '| lightning', lightning.__version__, '| transformers', transformers.__version__, '|', torch.cuda.get_device_name())"
} 2>&1 | tee "$out/versions.txt"
timeout 240 "$python" -m pytest -q -p no:cacheprovider -o addopts="-ra" tests/test_device.py 2>&1 | tee "$out/tests.txt" || status=1
timeout 400 "$python" -m lightning_stiffness.bench --full 2>&1 | tee "$out/bench.txt" || status=1
exit $status
