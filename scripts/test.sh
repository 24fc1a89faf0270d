#!/usr/bin/env bash
# Install everything the tests need into .venv/ and run the whole test suite.
# Usage: scripts/test.sh [PYTEST ARGS]   e.g. scripts/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh dev
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec .venv/bin/python -m pytest "$@"
