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
# The module of each command, so a call imports only its own module (torch takes ~2 s to import;
# the pipeline runs dozens of bookkeeping jobs that never touch it). `licm --help` imports all.
COMMANDS = {"data": "data", "train": "train", "figures": "figures", "classifier": "classifier",
            "evaluate": "evaluate", "omniglot": "omniglot", "summarize": "summary", "report": "report",
            "plan": "pipeline", "collect": "pipeline"}


def _modules_for(argv: list[str] | None) -> tuple[str, ...]:
    """Only the invoked command's module when argv names a known command; else every module."""
    args = sys.argv[1:] if argv is None else argv
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a in ("--params", "--profile"):
            skip = True
        elif not a.startswith("-"):
            return (COMMANDS[a],) if a in COMMANDS else STAGE_MODULES
    return STAGE_MODULES


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="licm", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
    parser.add_argument("--profile", choices=["auto", "paper", "quick", "smoke"], default=None,
                        help="override the file's `profile:` key")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<stage>")
    for name in _modules_for(argv):
        importlib.import_module(f"licm.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LicmError as exc:
        print(f"licm {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
