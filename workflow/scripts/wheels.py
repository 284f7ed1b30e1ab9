#!/usr/bin/env python3
"""Snakemake on a machine without internet: a folder of wheels made here, installed there.

  python workflow/scripts/wheels.py download [--out wheels] [--python-version 3.11]
                                             [--platform manylinux_2_28_x86_64] [--have FREEZE]
      (on a connected machine, in the project's environment: `make wheels`) the wheels of every
      distribution that Snakemake's local execution and the `licm` jobs need, beyond torch,
      torchvision and what they require (the target has them, built for its CUDA), at the versions
      installed here (requirements.lock),
      for the target's Python and platform; `--have` skips what the target already has (its
      `python -m pip freeze`). Left out: pulp (only Snakemake's ILP scheduler: run with
      `--scheduler greedy`), DVC, the SLURM executor, the test tools. Writes <out>/requirements.txt, the list to install.
  python workflow/scripts/wheels.py install [--wheels wheels]
      (on the target, in the repository, with the Python that has torch) installs the folder's
      wheels and this repository (editable) without contacting any index: pip --no-index --no-deps.

Some distributions publish no wheel (source only, pure Python): those are built here into wheels.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

# What the target brings (torch and torchvision, the pair built for its CUDA, and their requirements)
# and what the pipeline's offline run does not need.
TARGET_HAS = ("torch", "torchvision")
LEFT_OUT = ("pulp",)
ROOTS = ("snakemake",)
# Installed first, whatever the target has: what installs licm (editable) with pip --no-build-isolation
# (a fresh venv's own setuptools may predate bdist_wheel in setuptools).
BUILD = ("setuptools",)


def key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots, skip=frozenset()) -> dict[str, str]:
    """Distribution -> installed version, for `roots` and what they require (no extras), less `skip`."""
    from packaging.requirements import Requirement

    found, todo = {}, list(roots)
    while todo:
        name = todo.pop()
        if key(name) in found or key(name) in skip:
            continue
        dist = md.distribution(name)
        found[key(name)] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if not req.marker or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found


def needed(have: set[str]) -> dict[str, str]:
    from packaging.requirements import Requirement

    licm = [Requirement(r).name for r in md.requires("licm") or [] if "extra ==" not in r]
    skip = set(closure(TARGET_HAS)) | {key(n) for n in LEFT_OUT} | have
    return {**closure([*ROOTS, *licm], frozenset(skip)), **{key(n): md.version(n) for n in BUILD}}


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def download(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    have = {key(line.split("==")[0]) for line in Path(args.have).read_text().split()} if args.have else set()
    wanted = needed(have)
    target = ["--only-binary=:all:", "--python-version", args.python_version,
              *[a for p in args.platform for a in ("--platform", p)]]
    specs = [f"{name}=={version}" for name, version in sorted(wanted.items())]
    while specs:   # one pip call for all; a distribution without a wheel for the target is built below
        got = pip("download", "-q", "--no-deps", *target, "-d", str(out), *specs)
        missing = re.search(r"No matching distribution found for (\S+)", got.stderr)
        if not got.returncode:
            break
        if not missing or missing[1] not in specs:
            sys.exit(f"wheels: pip download failed:\n{got.stderr}")
        specs.remove(missing[1])   # no wheel published: build one from the source (pure Python; checked below)
        got = pip("wheel", "-q", "--no-deps", "-w", str(out), missing[1])
        if got.returncode:
            sys.exit(f"wheels: {missing[1]}: {got.stderr.strip().splitlines()[-1]}")
    impure = [w.name for w in out.glob("*.whl") if w.name.endswith("-none-any.whl") is False
              and f"cp{args.python_version.replace('.', '')}" not in w.name and "abi3" not in w.name]
    if impure:
        sys.exit(f"wheels: built for another Python or platform: {impure}")
    (out / "requirements.txt").write_text("".join(f"{n}=={v}\n" for n, v in sorted(wanted.items())))
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wheels: {len(wanted)} distributions, {size / 2**20:.1f} MiB in {out} (Python {args.python_version}, "
          f"{', '.join(args.platform)}); install there: python workflow/scripts/wheels.py install --wheels {out}")


def install(args) -> None:
    folder = Path(args.wheels)
    offline = ("--no-index", "--no-deps", "--find-links", str(folder))
    build = [line for line in (folder / "requirements.txt").read_text().split() if key(line.split("==")[0]) in BUILD]
    for step in (["--upgrade", *build], ["-r", str(folder / "requirements.txt")], ["--no-build-isolation", "-e", "."]):
        got = pip("install", "-q", *offline, *step)
        if got.returncode:
            sys.exit(f"wheels: pip install {' '.join(step)} failed:\n{got.stderr}")
    print(f"wheels: installed {folder} and licm; run e.g. `snakemake --workflow-profile workflow/profiles/default "
          "--scheduler greedy --cores all report`")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("download", help="make the wheel folder (connected machine)")
    d.add_argument("--out", default="wheels")
    d.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}")
    d.add_argument("--platform", action="append", default=None,
                   help="pip platform tags of the target (repeatable; default: manylinux x86_64)")
    d.add_argument("--have", help="the target's `pip freeze`: distributions not to download")
    d.set_defaults(func=download)
    i = sub.add_parser("install", help="install the folder and licm without an index (the target)")
    i.add_argument("--wheels", default="wheels")
    i.set_defaults(func=install)
    args = parser.parse_args()
    if getattr(args, "platform", 0) is None:
        args.platform = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    args.func(args)


if __name__ == "__main__":
    main()
