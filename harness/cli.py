"""The ``softmaxlab`` command: derive | accuracy | bench | report | exp-accuracy | readme.

Each subcommand lives in its own module and is imported only when it runs, so that
``softmaxlab derive`` needs neither torch nor jax.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys

# subcommand -> (module, help); each module has ``add_arguments(parser)`` and ``run(args)``.
SUBCOMMANDS = {
    "derive": ("softmaxlab.derivations.book", "regenerate and check the proof book (docs/proofs/)"),
    "accuracy": ("softmaxlab.harness.accuracy", "errors in ULPs against exact references, every provider"),
    "bench": ("softmaxlab.harness.bench", "side-by-side timings against PyTorch and JAX"),
    "report": ("softmaxlab.harness.report", "derive + accuracy + bench -> report/index.md, CSV, plots"),
    "exp-accuracy": ("softmaxlab.harness.exp_accuracy", "error of the kernels' own exp (float32 exhaustive)"),
    "readme": ("softmaxlab.harness.readme", "rewrite README.md's speed and accuracy tables from results/"),
    "warmup": ("softmaxlab.harness.warmup", "compile every kernel for both dtypes into the on-disk cache"),
    "compare": ("softmaxlab.harness.compare", "compare two runs: speed ratios with intervals, accuracy changes, regressions"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="softmaxlab",
        description="Verified numerics for the softmax family: proofs, accuracy, speed.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(module_name=module_name)
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            # A part still being written (or a broken install) must not take the other
            # subcommands down: this one then says why it cannot run.
            sub.set_defaults(unavailable=f"{type(error).__name__}: {error}")
            continue
        module.add_arguments(sub)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if getattr(args, "unavailable", None):
        print(f"softmaxlab {args.command}: not available ({args.unavailable})", file=sys.stderr)
        return 2
    args.command_line = "softmaxlab " + " ".join(shlex.quote(arg) for arg in argv)
    from .selection import SelectionError

    try:
        return int(importlib.import_module(args.module_name).run(args) or 0)
    except SelectionError as error:  # options that select nothing valid: the message, no traceback
        print(f"softmaxlab {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
