"""Faithfulness of dynamiclrp vs. Captum, Zennit, autoLRP and random on real weights and ground-truth tasks.

    python benchmarks/faithfulness.py --quick                      # a small subset (seconds to minutes)
    python benchmarks/faithfulness.py --out outputs/eval           # the full table of the README
    torchrun --nproc_per_node 2 benchmarks/faithfulness.py --quick # sharded over 2 processes (gloo on CPU)

Same as ``python -m dynamiclrp eval``; see :mod:`dynamiclrp.evaluation`.
"""
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

from dynamiclrp.evaluation import ensure_vision  # noqa: E402

ensure_vision()

from dynamiclrp.evaluation.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
