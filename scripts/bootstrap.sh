#!/usr/bin/env bash
# Create .venv/ in the project root and install structsearch into it (idempotent, fast when current).
# Usage: scripts/bootstrap.sh [EXTRAS]   e.g. scripts/bootstrap.sh dev
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3

if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($py --version)"
  "$py" -m venv .venv
fi
# Re-install only when the project's dependencies or the requested extras changed.
stamp=".venv/.structsearch-$(cat pyproject.toml | sha1sum | cut -c1-12)-${extras:-base}"
if [ ! -f "$stamp" ]; then
  # torch 2.14.1 on x86_64 is a CUDA build: about 5.6 GB in .venv. Say so before pip runs out of disk.
  free_kb="$(df -Pk . | awk 'NR == 2 {print $4}')"
  if [ "${free_kb:-0}" -lt 7000000 ] && ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    echo "bootstrap.sh: only $((free_kb / 1024)) MB free here; installing torch needs about 6 GB: free some disk if pip fails" >&2
  fi
  .venv/bin/python -m pip install -q --upgrade pip
  # torch/torchvision are pinned in pyproject.toml; pip takes them from the local wheel cache.
  .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
  rm -f .venv/.structsearch-* && touch "$stamp"
fi
