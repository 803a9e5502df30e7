"""The speed and memory benchmark of dynamiclrp against gradient x input and the other LRP libraries (not a test).

    .venv/bin/python benchmarks/bench.py                      # all six models, batch 1 and 8 (long: an hour or more)
    .venv/bin/python benchmarks/bench.py --batches 1 --models vgg16,gpt2 --json out.json --markdown out.md
    .venv/bin/python benchmarks/bench.py --quick              # tiny models, a smoke test

The same as ``dynamiclrp bench``; what it measures and how is documented in :mod:`dynamiclrp.bench`: time against
gradient x input and the peers, peak memory, memory growth, and the cost of recording constants (the
``recorded_forward`` row against ``forward``).
"""
import sys
from pathlib import Path

from dynamiclrp.bench import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if not any(a == "--json" or a.startswith("--json=") for a in args):
        args += ["--json", str(Path(__file__).with_name("bench-latest.json"))]
    sys.exit(main(args))
