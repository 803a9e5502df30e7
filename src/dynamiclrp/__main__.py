"""Command line of dynamiclrp: ``python -m dynamiclrp demo``, ``python -m dynamiclrp coverage SPEC`` (or the
``dynamiclrp`` console script).

Subcommands live in :data:`COMMANDS` (name -> (add_arguments, run, help)); add one there to extend the CLI.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

from . import LRP, LRPConfig

# ------------------------------------------------------------------------------------------------ demo


def _digits(seed: int = 0):
    """scikit-learn's bundled 8x8 digits (no download), scaled to [0, 1], split 80/20 with a fixed seed."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    split = int(0.8 * len(y))
    return x[perm[:split]], y[perm[:split]], x[perm[split:]], y[perm[split:]]


def _model() -> nn.Module:
    """A tiny CNN for 1x8x8 images."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(16 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    """Full-batch Adam on cross-entropy."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epsilon", type=float, default=1e-6, help="stabiliser of the epsilon rule (default 1e-6)")
    parser.add_argument("--gamma", type=float, default=0.0, help="gamma of convolutions and linear layers (default 0)")
    parser.add_argument("--out", default="outputs/demo_heatmaps.png", help="where to write the heatmap figure")
    parser.add_argument("--steps", type=int, default=200, help="full-batch training steps (default 200)")
    parser.add_argument("--samples", type=int, default=6, help="test images to explain (default 6)")


def demo(args: argparse.Namespace) -> int:
    """Train a tiny CNN on the digits, explain a few test images, check conservation, save heatmaps."""
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = _digits()
    model = _model()
    start = time.perf_counter()
    _train(model, x_train, y_train, args.steps)
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    print(f"trained {args.steps} steps in {time.perf_counter() - start:.1f} s; test accuracy {accuracy:.3f}")

    config = LRPConfig(epsilon=args.epsilon, gamma_conv=args.gamma, gamma_linear=args.gamma)
    lrp = LRP(model, config)
    x = x_test[: args.samples]
    with torch.no_grad():
        predicted = model(x).argmax(1)
    expl = lrp.explain(x, target=predicted)
    relevance = expl.relevance[0]
    print(f"\nLRP with {config}")
    print(f"{'sample':>6} {'label':>5} {'pred':>4} {'logit':>9} {'sum R':>9} {'ratio':>7}")
    titles = []
    for i, p in enumerate(predicted.tolist()):
        logit = expl.output[i, p].item()
        total = relevance[i].sum().item()
        ratio = total / logit if logit else float("nan")
        print(f"{i:>6} {y_test[i].item():>5} {p:>4} {logit:>9.4f} {total:>9.4f} {ratio:>7.3f}")
        titles.append(f"pred {p}  logit {logit:.2f}  sum R {total:.2f}")
    print("(sum R differs from the logit by the relevance the biases absorb; a bias-free model conserves it exactly)")
    print(f"\nstats: {expl.stats}")

    from .visualize import save_heatmaps

    path = save_heatmaps(list(x), list(relevance), args.out, titles=titles)
    print(f"heatmaps written to {path}")
    return 0


# ------------------------------------------------------------------------------------------------ coverage


def _coverage_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="torchvision:NAME, timm:NAME, hf:NAME (gpt2, bert, llama, ...), "
                                     "package.module:factory or path/to/file.py:factory")
    parser.add_argument("--input-shape", default=None,
                        help="example input shape, e.g. 1,3,32,32 (needed when a factory returns only a model)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-run", action="store_true", help="only check rule coverage, do not run the engine")


def coverage_command(args: argparse.Namespace) -> int:
    """Build the model of ``args.spec`` offline and print its coverage report; exit status 1 when some op has no
    rule or the engine run failed."""
    from .coverage import coverage
    from .zoo import build

    torch.manual_seed(0)
    model, inputs, kwargs = build(args.spec, args.input_shape)
    report = coverage(model, inputs, forward_kwargs=kwargs, run=not args.no_run, label=args.spec)
    print(report.to_json() if args.json else report)
    return 0 if report.complete and report.engine_error is None else 1


# ------------------------------------------------------------------------------------------------ CLI

COMMANDS = {
    "demo": (_demo_arguments, demo, "train a tiny CNN on scikit-learn's digits and explain it"),
    "coverage": (_coverage_arguments, coverage_command,
                 "which autograd ops of a model have an LRP rule, and its promise statistics"),
}
DEFAULT_COMMAND = "demo"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one subparser per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="dynamiclrp", description="Layer-wise Relevance Propagation for PyTorch.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add_arguments, _run, help_text) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv=None) -> int:
    """Entry point of ``python -m dynamiclrp`` and of the ``dynamiclrp`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, DEFAULT_COMMAND)  # no subcommand given: run the default one (its options may follow)
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command][1](args)


if __name__ == "__main__":
    sys.exit(main())
