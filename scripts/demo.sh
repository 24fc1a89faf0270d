#!/usr/bin/env bash
# Install into .venv/ and run the main job on the embedded default: train a small teacher on
# scikit-learn's digits (once, cached), search 20 students under 50% of its MACs, print the
# Pareto front and the best student within the budget.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/structsearch search studies/digits_default.yaml
.venv/bin/structsearch best --budget-flops 50% --study digits-default
