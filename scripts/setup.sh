#!/usr/bin/env bash
# Create .venv and install TEASR into it. Usage: bash scripts/setup.sh [EXTRAS]   (e.g. dev, train, space)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch 2.13.0 is pinned so that machines with a local CPU wheel use it instead of downloading a CUDA build.
spec="."
[ -n "$extras" ] && spec=".[$extras]"
.venv/bin/python -m pip install -q "torch==${TEASR_TORCH_VERSION:-2.13.0}" -e "$spec"
