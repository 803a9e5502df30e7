#!/usr/bin/env bash
# Quick start 1: set up, train a tiny CNN on scikit-learn's digits, explain it, write outputs/demo_heatmaps.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
.venv/bin/python -m dynamiclrp demo "$@"
