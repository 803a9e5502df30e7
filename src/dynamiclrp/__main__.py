"""Command line of dynamiclrp: ``python -m dynamiclrp demo``, ``python -m dynamiclrp explain MODEL INPUT``,
``python -m dynamiclrp coverage SPEC`` (or the ``dynamiclrp`` console script).

Subcommands live in :data:`COMMANDS` (name -> (add_arguments, run, help)); add one there to extend the CLI.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from . import __version__
from . import bench as bench_command
from .cli import demo as demo_command
from .cli import explain as explain_command
from .errors import DynamicLRPError
from .evaluation import cli as eval_command

# ------------------------------------------------------------------------------------------------ coverage


def _coverage_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="?", help="torchvision:NAME, timm:NAME, hf:NAME (gpt2, bert, llama, ...), "
                                                "package.module:factory or path/to/file.py:factory")
    parser.add_argument("--input-shape", default=None,
                        help="example input shape, e.g. 1,3,32,32 (needed when a factory returns only a model)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-run", action="store_true", help="only check rule coverage, do not run the engine")
    parser.add_argument("--output-selector", default=None,
                        help="for models returning tuples/dicts: the key (or index) of the output to check")
    parser.add_argument("--forward-kwarg", action="append", default=[], metavar="KEY=VALUE",
                        help="a keyword argument of the forward call (a Python literal or a string); repeatable")
    parser.add_argument("--ops", action="store_true",
                        help="no model: which of torch's autograd node types have a rule, the missing ones by family")


def coverage_command(args: argparse.Namespace) -> int:
    """Build the model of ``args.spec`` offline and print its coverage report; exit status 1 when some op has no
    rule or the engine run failed."""
    from .coverage import coverage, op_coverage
    from .zoo import load

    if args.ops:
        import json

        ops = op_coverage()
        print(json.dumps(ops.to_dict(), indent=2) if args.json else ops)
        return 0
    if args.spec is None:
        raise SystemExit("dynamiclrp coverage: give a model SPEC, or --ops for torch's op types")
    torch.manual_seed(0)
    loaded = load(args.spec, input_shape=args.input_shape)  # the parser `explain` uses: bundled models too
    model = loaded.model
    inputs, kwargs = loaded.example or example_inputs(loaded)
    kwargs = {**kwargs, **parse_kwargs(args.forward_kwarg)}
    selector = args.output_selector
    if selector is not None and selector.lstrip("-").isdigit():
        selector = int(selector)
    report = coverage(model, inputs, forward_kwargs=kwargs, run=not args.no_run, label=args.spec,
                      output_selector=selector)
    print(report.to_json() if args.json else report)
    return 0 if report.complete and report.engine_error is None else 1


def example_inputs(loaded) -> tuple:
    """``(inputs, forward_kwargs)`` for a model loaded without an example (the bundled real models)."""
    if loaded.modality == "text" and loaded.tokenizer is not None:
        return (loaded.tokenizer("The capital of France is", return_tensors="pt").input_ids,), {}
    return (torch.randn(1, 3, loaded.image_size, loaded.image_size),), {}


def parse_kwargs(items) -> dict:
    """``["key=value", ...]`` as keyword arguments: values are Python literals (``3``, ``True``, ``[1, 2]``,
    ``'text'``) or, failing that, strings."""
    import ast

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--forward-kwarg {item!r} should read KEY=VALUE with KEY a Python name")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


# ------------------------------------------------------------------------------------------------ CLI

COMMANDS = {
    "demo": (demo_command.add_arguments, demo_command.run,
             "explain ImageNet EfficientNet-Lite0 on bundled photos and SmolLM2-135M on prompts (real weights, "
             "offline)"),
    "explain": (explain_command.add_arguments, explain_command.run,
                "explain one prediction of a model on an image file, a prompt or a tensor file"),
    "coverage": (_coverage_arguments, coverage_command,
                 "which autograd ops of a model have an LRP rule, and its promise statistics"),
    "bench": (bench_command.add_arguments, bench_command.run_command,
              "time and peak memory of dynamiclrp against gradient x input, Zennit, Captum, autoLRP and LXT"),
    "eval": (eval_command.add_arguments, eval_command.run,
             "faithfulness (ABPC, pointing game, TPS/TGS) of dynamiclrp vs Captum, Zennit, autoLRP and random"),
}
DEFAULT_COMMAND = "demo"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one subparser per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="dynamiclrp", description="Layer-wise Relevance Propagation for PyTorch.")
    parser.add_argument("--version", action="version", version=f"dynamiclrp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add_arguments, _run, help_text) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv=None) -> int:
    """Entry point of ``python -m dynamiclrp`` and of the ``dynamiclrp`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, DEFAULT_COMMAND)  # no subcommand given: run the default one (its options may follow)
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][1](args)
    except USER_ERRORS as err:  # a bad spec, file, target or missing extra: one line, not a traceback
        if os.environ.get("DYNAMICLRP_TRACEBACK"):
            raise
        print(f"dynamiclrp {args.command}: error: {err}", file=sys.stderr)
        return 2


#: errors that come from what the user asked for (set DYNAMICLRP_TRACEBACK=1 to see the traceback)
USER_ERRORS = (DynamicLRPError, FileNotFoundError, ValueError, ImportError, AttributeError, TypeError)


if __name__ == "__main__":
    sys.exit(main())
