#!/usr/bin/env bash
# Run a command of this repository on a machine that has Python with torch but neither Snakemake,
# DVC, network nor an installed licm: the GPU machines of the `device` tool (README: "Running on a
# GPU machine without Snakemake"). It
#   - installs the wheels carried in .whl/ (what that Python lacks, e.g. jsonschema) into /tmp/site,
#   - puts src/ on PYTHONPATH (no `pip install -e` there),
#   - points the data stage at a carried mirror folder (.shared_data/, laid out like ../shared/data),
#   - exports LICM_GIT_COMMIT from .device_state/commit (the tree there has no .git; write the file
#     before the call: git describe --always --dirty --abbrev=40 > .device_state/commit),
# then runs `licm ARGS` (first argument `licm`) or any other command with that environment, e.g.
#   workflow/scripts/device_run.sh licm --profile paper standalone --experiments main --budget 540 --pack "$OUT"
#   workflow/scripts/device_run.sh python3 benchmarks/bench_committee.py --device cuda
# PYTHON selects the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
shopt -s nullglob
wheels=(.whl/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}"
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -z "${LICM_DATA_MIRROR:-}" ] && [ -d .shared_data/mnist ]; then
    export LICM_DATA_MIRROR="$PWD/.shared_data"
fi
if [ -z "${LICM_GIT_COMMIT:-}" ] && [ -f .device_state/commit ]; then
    export LICM_GIT_COMMIT="$(cat .device_state/commit)"
fi
if [ "${1:-}" = licm ]; then
    shift
    exec "$PY" -m licm.cli "$@"
fi
exec "$@"
