#!/usr/bin/env bash
# The GPU checks of issues #3 and #6 in one call on a GPU machine:
#   exactness of every zoo model and method on CUDA, the callback under the single-device, DDP,
#   FSDP (FSDP1) and ModelParallelStrategy (FSDP2) strategies on one GPU, then the benchmark with
#   the issue's GPU sizes (ResNet-18 N=512, N=8192 MLP, BERT-base N=256 x 128 tokens).
# Uses the machine's own python3 (torch, lightning, transformers, pytest preinstalled) and the
# package from this checkout; nothing is installed. Logs go to $OUT (the device tool's folder)
# or ./gpu-check. About 5 minutes on an H100.
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
