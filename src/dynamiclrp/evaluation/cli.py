"""``dynamiclrp eval`` (and ``benchmarks/faithfulness.py``): run the faithfulness tasks, write JSON, PNG curves and
a markdown table, print the table. Under ``torchrun --nproc_per_node N`` the examples are sharded over N
processes and rank 0 writes the files."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from . import report
from .methods import ensure_vision
from .runner import init_distributed, run_task
from .tasks import SIZES, TASKS, build


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a small subset of every task (CI, smoke tests)")
    parser.add_argument("--tasks", default=",".join(TASKS),
                        help=f"comma-separated tasks (default all: {','.join(TASKS)})")
    parser.add_argument("--out", default="outputs/eval", help="folder for results.json, results.md and the PNGs")
    parser.add_argument("--sizes", default=None,
                        help='JSON overrides of the task sizes, e.g. \'{"imagenet": {"n": 40, "heldout": 8}}\'')
    parser.add_argument("--no-peers", action="store_true", help="only the dynamiclrp presets (no baselines/peers)")
    parser.add_argument("--progress", action="store_true", help="print a line per chunk")


def run(args: argparse.Namespace) -> int:
    mode = "quick" if args.quick else "full"
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {sorted(TASKS)}")
    sizes = json.loads(args.sizes) if args.sizes else {}
    if not isinstance(sizes, dict) or set(sizes) - set(TASKS):
        raise ValueError(f"--sizes must be a JSON object keyed by task names {sorted(TASKS)}")
    ensure_vision()
    rank, world = init_distributed()
    results = []
    start = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        task = build(name, mode, **sizes.get(name, {}))
        res = run_task(task, peers=not args.no_peers, progress=args.progress)
        res["build_seconds"] = time.perf_counter() - t0 - res["seconds"]
        results.append(res)
        if rank == 0:
            print(f"{name}: {res['n_test']} test examples, selected {res['selection']['selected']} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    if rank == 0:
        meta = {"mode": mode, "world_size": world, "sizes": {n: {**SIZES[mode][n], **sizes.get(n, {})}
                                                             for n in names},
                "torch": torch.__version__, "seconds": time.perf_counter() - start}
        files = report.write(results, Path(args.out), meta)
        print()
        print(files["markdown"].read_text(encoding="utf-8"))
        for path in files.values():
            print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="faithfulness", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
