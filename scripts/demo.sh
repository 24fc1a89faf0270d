#!/usr/bin/env bash
# Install into .venv/ and run the main job on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/structsearch space cifar_resnet56
.venv/bin/structsearch cost cifar_resnet56
