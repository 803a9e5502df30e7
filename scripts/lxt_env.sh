#!/usr/bin/env bash
# Create .venv-lxt: LXT 2.1 (AttnLRP / CP-LRP reference, Achtibat et al. 2024) with transformers<5, used only to make
# the committed fixtures in tests/fixtures/lxt (scripts/lxt_fixtures.sh). torch stays the CPU build of the main venv.
# Usage: scripts/lxt_env.sh   (idempotent; PYTHON=python3.11 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3
venv=.venv-lxt
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pins="$venv/constraints-lxt.txt"
cat > "$pins" <<'PINS'
torch==2.13.0
torchvision==0.28.0
transformers==4.57.6
lxt==2.1
PINS
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -c "$pins" torch==2.13.0
# LXT's declared extras (bitsandbytes, open_clip_torch, matplotlib) are not needed by lxt.efficient: install it without
# them, then what the efficient mode and the fixtures import.
"$venv/bin/python" -m pip install -q -c "$pins" --no-deps 'lxt==2.1'
"$venv/bin/python" -m pip install -q -c "$pins" 'transformers<5' safetensors accelerate tabulate zennit==0.5.1 \
    torchvision==0.28.0
# LXT's ViT patch imports torchvision, whose PyPI wheel is built for CUDA torch: its C ops do not register beside the
# CPU build. A start-up file (.pth) defines the two op schemas its import needs, just before torchvision is imported
# (what dynamiclrp.zoo.ensure_torchvision_importable does in the main venv).
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cat > "$site/_lxt_tv_shim.py" <<'PYSHIM'
"""Before ``import torchvision``, define its ``nms``/``qnms`` op schemas (its C extension does not load beside CPU torch)."""
import importlib.abc
import importlib.util
import sys
from pathlib import Path


class _Shim(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)  # once
            import torch

            spec = importlib.util.find_spec("torchvision")
            for folder in (spec.submodule_search_locations or []) if spec else []:
                for lib in Path(folder).glob("_C*.so"):
                    try:
                        torch.ops.load_library(str(lib))  # a torchvision built for this torch: nothing to do
                        return None
                    except (ImportError, OSError):
                        pass
            global _LIB
            _LIB = torch.library.Library("torchvision", "DEF")
            _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        return None


sys.meta_path.insert(0, _Shim())
PYSHIM
echo "import _lxt_tv_shim" > "$site/_lxt_tv_shim.pth"
"$venv/bin/python" - <<'PY'
import torch
import transformers
import lxt.efficient  # noqa: F401
import torchvision  # noqa: F401
assert torch.__version__ == "2.13.0+cpu", f"torch changed to {torch.__version__}"
assert transformers.__version__.split(".")[0] == "4", transformers.__version__
print("lxt venv ok: torch", torch.__version__, "transformers", transformers.__version__)
PY
