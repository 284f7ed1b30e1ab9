"""`licm <stage> ...`: the one command that Snakemake rules and DVC stages call.

Each module that owns a stage registers its own subcommands (`register(subparsers)`), so
this file stays a thin dispatcher and a stage's arguments live next to its code.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from licm.config import LicmError


# Modules that own stages; each defines register(subparsers).
STAGE_MODULES = ("data", "train", "figures", "classifier", "evaluate", "omniglot", "summary", "report", "pipeline")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="licm", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
    parser.add_argument("--profile", choices=["auto", "paper", "quick", "smoke"], default=None,
                        help="override the file's `profile:` key")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<stage>")
    for name in STAGE_MODULES:
        importlib.import_module(f"licm.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LicmError as exc:
        print(f"licm {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
