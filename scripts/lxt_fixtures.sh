#!/usr/bin/env bash
# Regenerate tests/fixtures/lxt/*.pt with LXT 2.1 (builds .venv-lxt first if missing). Usage: scripts/lxt_fixtures.sh [FAMILY ...]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-lxt/bin/python ] || bash scripts/lxt_env.sh
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" .venv-lxt/bin/python scripts/lxt_fixtures.py "$@"
