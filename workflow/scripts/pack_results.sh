#!/usr/bin/env bash
# Carry the results tree between machines in parts of at most SIZE (a transfer limit), e.g. from a GPU
# node back to the repository, where `snakemake ... report` continues from it:
#   workflow/scripts/pack_results.sh pack OUT [SIZE]    results/ and logs/ -> OUT/results.tar.gz.00, .01, ...
#                                                     (SIZE as split(1) reads it, default 1G)
#   workflow/scripts/pack_results.sh unpack DIR         the parts in DIR -> results/ and logs/ here
# Run it in the repository. Unpacked files keep their times, so Snakemake sees the same state.
set -euo pipefail
case "${1:-}" in
pack)
    out="${2:?pack: OUT folder}"; size="${3:-1G}"
    mkdir -p "$out"
    tar -czf - $(ls -d results logs 2>/dev/null) | split -b "$size" -d - "$out/results.tar.gz."
    ls -l "$out" ;;
unpack)
    cat "${2:?unpack: DIR of the parts}"/results.tar.gz.* | tar -xzf - ;;
*)
    sed -n '2,7p' "$0" >&2; exit 2 ;;
esac
