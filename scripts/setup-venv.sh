#!/usr/bin/env bash
# Shared set-up of scripts/demo.sh and scripts/test.sh: create .venv (if missing) and install
# torch 2.14.1 + the package with the extra named in $1. Sourced, not run.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
[ -x .venv/bin/python ] || python3 -m venv .venv
pip_quiet() {
  .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "^WARNING: Location" >&2)
}
pip_quiet torch==2.14.1 torchvision==0.29.1 -e ".[$1]"
