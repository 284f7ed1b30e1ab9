"""`licm <stage> ...`: the one command that Snakemake rules and DVC stages call.

Each module that owns a stage registers its own subcommands (`register(subparsers)`), so
this file stays a thin dispatcher and a stage's arguments live next to its code.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from licm import interrupts
from licm.config import LicmError


# The module of each command, so a call imports only its own module (torch takes ~2 s to import;
# the pipeline runs dozens of bookkeeping jobs that never touch it). `licm --help` imports all.
# A new command: one entry here, and `register(subparsers)` in its module.
COMMANDS = {"data": "data", "train": "train", "figures": "figures", "classifier": "classifier",
            "evaluate": "evaluate", "omniglot": "omniglot", "summarize": "summary", "report": "report",
            "plan": "pipeline", "collect": "pipeline", "dvc-yaml": "stages", "standalone": "standalone",
            "publish": "publish", "composition": "composition", "independence": "independence",
            "genericity": "genericity"}
# Modules that own commands, in `licm --help` order; each defines register(subparsers).
STAGE_MODULES = tuple(dict.fromkeys(COMMANDS.values()))
# Set by the Snakefile for its jobs (workflow/rules/common.smk): the profile Snakemake resolved.
PROFILE_ENV = "LICM_PROFILE"


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
    parser.add_argument("--profile", choices=["auto", "paper", "paper_main", "quick", "smoke"], default=os.environ.get(PROFILE_ENV),
                        help=f"override the file's `profile:` key (default: ${PROFILE_ENV} when set)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<stage>")
    for name in _modules_for(argv):
        importlib.import_module(f"licm.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. SIGINT and SIGTERM stop it cleanly (licm.interrupts): a command run as a
    program then exits as killed by that signal; called with `argv` (tests), it returns 128 + signal."""
    restore = interrupts.guard()
    command = "licm"
    try:
        args = build_parser(argv).parse_args(argv)
        command = f"licm {args.command}"
        return int(args.func(args) or 0)
    except LicmError as exc:
        print(f"{command}: error: {exc}", file=sys.stderr)
        return 2
    except interrupts.Interrupted as exc:
        print(f"{command}: stopped by {exc.name}; nothing unfinished is marked finished "
              "(a run resumes from its last checkpoint)", file=sys.stderr)
        if argv is None:
            interrupts.die_by(exc.signum)
        return 128 + exc.signum
    finally:
        restore()


if __name__ == "__main__":
    sys.exit(main())
