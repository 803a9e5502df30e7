"""Print the README's coverage table (our version of the paper's Tables 2 and A.4) from coverage reports.

    .venv/bin/python benchmarks/coverage_table.py > /tmp/table.md
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from test_zoo import SPECS  # noqa: E402

from dynamiclrp import coverage  # noqa: E402
from dynamiclrp.zoo import build  # noqa: E402


def main():
    print("| model | nodes | covered | op types | promises (strict/dependent/pre) | chain nodes | δ | ρ |")
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    for spec in SPECS:
        model, inputs, kwargs = build(spec)
        r = coverage(model, inputs, forward_kwargs=kwargs, label=spec)
        s = r.stats
        if not r.complete:
            missing = ", ".join(sorted(r.uncovered))
            print(f"| {spec} | {r.nodes} | {r.covered_nodes} | {r.covered_op_types}/{r.op_types} | "
                  f"not covered: {missing} | | | |")
            continue
        if s is None:
            print(f"| {spec} | {r.nodes} | {r.covered_nodes} | {r.covered_op_types}/{r.op_types} | "
                  f"engine refused: {r.engine_error.split(':')[0]} | | | |")
            continue
        k = s["promises_by_kind"]
        print(f"| {spec} | {r.nodes} | {r.covered_nodes} | {r.covered_op_types}/{r.op_types} | {s['promises']} "
              f"({k.get('strict', 0)}/{k.get('dependent', 0)}/{k.get('pre', 0)}) | {s['chain_nodes']} | "
              f"{s['max_promise_depth']} | {s['density']:.3f} |")


if __name__ == "__main__":
    main()
