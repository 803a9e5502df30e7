#!/usr/bin/env bash
# Quick start 2: set up with the test dependencies and run the whole test suite (slow-marked tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/ruff check src tests
.venv/bin/python -m pytest -q "$@"
